"""Atomic writes: a reader never sees half a file or half a folder."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
# Our temporaries: .{name}.{host}-{pid}-{random}.tmp|old; older writers' names end in a 32-hex uuid or mkstemp's tail.
_OURS = re.compile(r"^\..*\.([0-9a-f]{6})-(\d+)-[0-9a-f]{8}\.(tmp|old)$")
_OLDER = re.compile(r"^\..+\.([0-9a-f]{32}\.(tmp|old)(\.\w+)?|[\w-]{8}\.(tmp|webp))$")
STALE_AFTER_S = 24 * 3600  # a temporary nobody has touched for a day is an orphan, whoever wrote it


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


def temporary_name(target: str | os.PathLike, kind: str = "tmp", pid: int | None = None) -> Path:
    """A hidden sibling of `target` naming this host and process, so a later run can tell an orphan from a live
    write (`remove_stale_temporaries`)."""
    target = Path(target)
    owner = f"{_HOST}-{os.getpid() if pid is None else pid}-{uuid.uuid4().hex[:8]}"
    return target.with_name(f".{target.name[:120]}.{owner}.{kind}")


def replace_folder(new: Path, target: Path) -> None:
    """Move a finished folder into place, swapping out any older one only once the new one is complete."""
    if not target.exists():
        os.replace(new, target)
        return
    old = temporary_name(target, "old")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writing_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new hidden folder beside `target` to fill; when the block ends it replaces `target` whole. If the block
    raises (or the process dies), `target` stays as it was and the half-written folder is removed (or left for
    `remove_stale_temporaries`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    work = temporary_name(target)
    work.mkdir()
    try:
        yield work
        replace_folder(work, target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temporaries that interrupted writers left in `folder`: ours whose process on this host has ended,
    and any untouched for `stale_after_s`. Live writes of other processes are left alone. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        ours, older = _OURS.match(entry.name), _OLDER.match(entry.name)
        if not (ours or older):
            continue
        try:
            orphan = now - entry.lstat().st_mtime > stale_after_s or (
                ours is not None and ours.group(1) == _HOST and not _alive(int(ours.group(2))))
        except FileNotFoundError:  # finished by its writer meanwhile
            continue
        if not orphan:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
