"""Names that come from users (prompt files, node widgets, model pickers) turned into paths that stay where they
belong: strictly inside a given folder, each part a name the filesystem accepts."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

NAME_MAX = 255  # bytes per path component on ext4, APFS, NTFS


def inside(root: str | os.PathLike, relative: str, what: str, reserve: int = 0, root_name: str | None = None) -> Path:
    """root/relative when it names a place strictly inside `root` (no absolute path, no '..' leaving it, not `root`
    itself); `reserve` bytes of each component are kept free for a suffix the caller appends. ValueError otherwise,
    naming `root` as `root_name` (e.g. "the output folder") when given."""
    where = root_name or str(root)
    text = str(relative).replace("\\", "/")
    shown = repr(text if len(text) <= 60 else text[:40] + "...")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{what} {shown} is an absolute path; give a name inside {where}")
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise ValueError(f"{what} {shown} points outside {where}; give a folder name inside it")
    if depth == 0:
        raise ValueError(f"{what} {shown} names {where} itself, not a folder inside it; give a name such as "
                         f"'LayerT2V/layers'")
    too_long = [p for p in parts if len(p.encode()) + reserve > NAME_MAX]
    if too_long:
        raise ValueError(f"{what} {shown} is too long: {len(too_long[0])} characters in one folder name, at most "
                         f"{NAME_MAX - reserve}")
    base = Path(root).resolve()
    target = (base / Path(*parts)).resolve()
    if base not in target.parents:  # '..' inside the name, or a symlink, leading out of root
        raise ValueError(f"{what} {shown} points outside {where} (through a link)")
    return target


def plain_name(name: str, what: str) -> str:
    """One folder name: no separators, not '.' or '..', not hidden, within the filesystem's length limit."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty folder name, got {name!r}")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise ValueError(f"{what} must be one plain folder name inside the output folder (no '/', '\\', '..' "
                         f"or leading '.'), got {name!r}")
    if len(name.encode()) > NAME_MAX - 8:  # room for a '-N' suffix and temporary names
        raise ValueError(f"{what} is too long ({len(name)} characters; at most {NAME_MAX - 8})")
    return name
