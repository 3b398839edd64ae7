"""Atomic writes: a reader never sees half a file or half a folder."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """A new empty file beside `path` to write and then rename over it, with the permissions a plain open gives
    (mkstemp makes it private, which would leave saved models unreadable to other users)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    give_plain_permissions(tmp)
    return tmp


def give_plain_permissions(path: str | os.PathLike) -> None:
    """Read-write for the owner, readable by others as the umask allows: what open() would have made."""
    os.chmod(path, 0o666 & ~_umask())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Text through a temporary file in the same folder, then a rename."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
