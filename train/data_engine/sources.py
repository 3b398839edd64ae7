"""The video list and reading its clips.

A list is jsonl, one video per line:

    {"video": "clips/dog.mp4", "caption": "a brown dog runs on a beach"}
    {"video": "clips/two.mp4", "caption": "...", "id": "two", "foregrounds": ["a red ball", "a cat"],
     "background": "a living room"}

`video` (relative to the list's folder unless absolute; a file ffmpeg reads or a folder of PNG frames) and `caption`
are required; `id` names the video's samples (default: the file's stem and a hash of its path); `foregrounds` and
`background` are captions for backends that take them from the list (the caption annotator).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from layert2v_core.video_io import ffmpeg_exe, probe_video, read_video

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")


@dataclass(frozen=True)
class VideoRow:
    id: str
    video: Path
    caption: str
    hints: dict[str, Any] = field(default_factory=dict)


def _row(data: Any, base: Path, where: str) -> VideoRow:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a line must be a JSON object with 'video' and 'caption'")
    video, caption = data.get("video"), data.get("caption")
    if not isinstance(video, str) or not video:
        raise ValueError(f"{where}: 'video' must be a path string, got {video!r:.60}")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where}: 'caption' must be a non-empty string, got {caption!r:.60}")
    path = Path(video) if Path(video).is_absolute() else base / video
    name = data.get("id")
    if name is None:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)[:60] or "video"
        name = f"{stem}-{hashlib.sha1(video.encode()).hexdigest()[:10]}"
    elif not isinstance(name, str) or not ID_PATTERN.match(name):
        raise ValueError(f"{where}: 'id' must be 1-120 letters, digits, '.', '_' or '-', got {name!r:.60}")
    hints = {}
    foregrounds = data.get("foregrounds")
    if foregrounds is not None:
        if not isinstance(foregrounds, list) or not 1 <= len(foregrounds) <= 2 or not all(
                isinstance(c, str) and c.strip() for c in foregrounds):
            raise ValueError(f"{where}: 'foregrounds' must be a list of 1 or 2 non-empty captions")
        hints["foregrounds"] = [c.strip() for c in foregrounds]
    background = data.get("background")
    if background is not None:
        if not isinstance(background, str) or not background.strip():
            raise ValueError(f"{where}: 'background' must be a non-empty string")
        hints["background"] = background.strip()
    return VideoRow(name, path, caption.strip(), hints)


def read_list(path: str | Path) -> list[VideoRow]:
    """All rows of a video list; one ValueError naming every bad line (up to 10) and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video list at {path}: give a .jsonl file, one "
                                f'{{"video": ..., "caption": ...}} per line')
    rows, problems, seen = [], [], {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                row = _row(json.loads(line), path.parent, where)
            except json.JSONDecodeError as error:
                problems.append(f"{where}: not JSON ({error.msg})")
                continue
            except ValueError as error:
                problems.append(str(error))
                continue
            if row.id in seen:
                problems.append(f"{where}: id {row.id!r} is already used on line {seen[row.id]}; ids must differ")
                continue
            seen[row.id] = number
            rows.append(row)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError(f"{path}: fix or remove these lines{more}:\n  " + "\n  ".join(problems[:10]))
    if not rows:
        raise ValueError(f"{path} lists no video")
    return rows


def _fit(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """Size after scaling down (aspect kept, even sides) so the longer side is at most max_side."""
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return max(2, int(round(height * scale / 2)) * 2), max(2, int(round(width * scale / 2)) * 2)


def read_clip(path: Path, max_frames: int | None = None, max_side: int | None = None) -> tuple[torch.Tensor, float]:
    """Frames [T, H, W, 3] float32 in [0, 1] and fps, at most max_frames frames, scaled to at most max_side.

    Files are streamed from ffmpeg frame by frame as 8-bit RGB, so memory holds only the frames kept.
    """
    if path.is_dir():
        frames, fps = read_video(path)
        clip = torch.from_numpy(frames[:max_frames, ..., :3].copy())
        height, width = _fit(*clip.shape[1:3], max_side)
        if (height, width) != tuple(clip.shape[1:3]):
            clip = F.interpolate(clip.permute(0, 3, 1, 2), size=(height, width), mode="area").permute(0, 2, 3, 1)
        return clip.contiguous(), fps
    if not path.is_file():
        raise FileNotFoundError(f"no video at {path}")
    info = probe_video(path)
    height, width = _fit(info.height, info.width, max_side)
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
               "-an", "-vf", f"scale={width}:{height}:flags=area", *(["-frames:v", str(max_frames)]
                                                                   if max_frames else []),
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    size = height * width * 3
    frames = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        while True:
            chunk = process.stdout.read(size)
            if len(chunk) < size:
                break
            frames.append(torch.from_numpy(np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3).copy()))
        error = process.stderr.read().decode(errors="replace").strip()
    if process.returncode != 0 or not frames:
        raise ValueError(f"ffmpeg could not decode {path.name}: {error[-200:] or 'no frames'}")
    return torch.stack(frames).float() / 255.0, info.fps or 16.0
