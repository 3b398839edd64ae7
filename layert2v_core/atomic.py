"""Atomic writes: a reader never sees half a file or half a folder."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """A new temporary file beside `path` for a writer to fill. When the block ends, it gets the permissions a plain
    open() gives and is renamed over `path`; if the block raises, it is removed and `path` stays as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        # mkstemp, and writers that re-create the file (safetensors), make it private: saved models would be
        # unreadable to other users
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Text through a temporary file in the same folder, then a rename."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """JSON through a temporary file in the same folder, then a rename."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False))


def replace_folder(new: Path, target: Path) -> None:
    """Move a finished folder into place, swapping out any older one only once the new one is complete."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
