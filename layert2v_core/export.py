"""Writing a generated sample to disk the way a compositor wants it.

One folder per sample:
  full.mp4, background.mp4        H.264 RGB
  fg{i}.mp4, alpha{i}.mp4         straight foreground colour and its matte (white = opaque) as plain videos
  fg{i}_rgba.webm / .mov / _png/  straight RGBA: VP9 with alpha, ProRes 4444 with alpha, RGBA PNG sequence
  preview.mp4                     side by side: full | background | each fg over a checkerboard | each alpha
  manifest.json                   prompts, seed, settings, model hashes, layer-consistency error
The folder is written aside and swapped in when complete: a reader (or a rerun after a kill) sees the old sample
or the new one, never a mix; temporaries that killed runs left beside it are removed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .atomic import write_json, writing_folder
from .composite import over_background
from .pipeline import LayeredVideo
from .video_io import write_video

RGBA_FORMATS = {"webm": "_rgba.webm", "mov": "_rgba.mov", "png": "_rgba_png"}


def checkerboard(height: int, width: int, cell: int = 8) -> torch.Tensor:
    """A grey checkerboard [3, 1, H, W] to show transparency in previews."""
    ys = torch.arange(height)[:, None] // cell
    xs = torch.arange(width)[None, :] // cell
    board = torch.where((ys + xs) % 2 == 0, 0.8, 0.55)
    return board.expand(3, 1, height, width)


def frames(video: torch.Tensor) -> torch.Tensor:
    """[C, T, H, W] -> [T, H, W, C], the frame layout the writers take."""
    return video.permute(1, 2, 3, 0).contiguous()


def preview(result: LayeredVideo) -> torch.Tensor:
    """Side-by-side [3, T, H, N*W] of every layer, foregrounds over a checkerboard, alphas as grey."""
    _, _, height, width = result.full.shape
    board = checkerboard(height, width)
    tiles = [result.full, result.background]
    tiles += [over_background(board, [fg], [a]) for fg, a in zip(result.foregrounds, result.alphas)]
    tiles += [a.expand(3, -1, -1, -1) for a in result.alphas]
    return torch.cat(tiles, dim=-1)


def check_finite(result: LayeredVideo) -> None:
    """Every layer finite and within [0, 1]; one message naming the layers that are not."""
    named = {"full": result.full, "background": result.background,
             **{f"fg{i}": v for i, v in enumerate(result.foregrounds, 1)},
             **{f"alpha{i}": v for i, v in enumerate(result.alphas, 1)}}
    problems = []
    for name, video in named.items():
        bad = int((~torch.isfinite(video)).sum())
        if bad:
            problems.append(f"{name} has {bad} NaN/inf value(s)")
        elif video.numel() and (video.min() < 0 or video.max() > 1):
            problems.append(f"{name} spans [{float(video.min()):.3g}, {float(video.max()):.3g}]")
    if problems:
        raise ValueError(f"cannot save these layers: {'; '.join(problems)}; layers must be finite and in [0, 1] "
                         f"(decoded layers always are: check the code that built or edited them)")


def save_layers(result: LayeredVideo, folder: str | os.PathLike, fps: float = 16.0,
                rgba_formats: Sequence[str] = ("webm", "mov"), manifest: Mapping | None = None) -> dict[str, str]:
    """Write every layer of `result` into `folder`; returns {role: file name} (also stored in manifest.json)."""
    unknown = [f for f in rgba_formats if f not in RGBA_FORMATS]
    if unknown:
        raise ValueError(f"unknown RGBA format(s) {unknown}; choose from {list(RGBA_FORMATS)}")
    check_finite(result)
    with writing_folder(folder) as work:
        return _write_sample(result, work, fps, rgba_formats, manifest)


def _write_sample(result: LayeredVideo, folder: Path, fps: float, rgba_formats: Sequence[str],
                  manifest: Mapping | None) -> dict[str, str]:
    files: dict[str, str] = {}

    def put(role: str, name: str, video: torch.Tensor) -> None:
        write_video(folder / name, frames(video), fps)
        files[role] = name

    put("full", "full.mp4", result.full)
    put("background", "background.mp4", result.background)
    for i, (fg, alpha) in enumerate(zip(result.foregrounds, result.alphas), start=1):
        put(f"fg{i}", f"fg{i}.mp4", fg)
        put(f"alpha{i}", f"alpha{i}.mp4", alpha.expand(3, -1, -1, -1))
        for fmt in rgba_formats:
            put(f"fg{i}_rgba_{fmt}", f"fg{i}{RGBA_FORMATS[fmt]}", result.rgba(i))
    put("preview", "preview.mp4", preview(result))
    record = {
        "layers": result.spec.segments, "num_foregrounds": result.spec.num_foregrounds,
        "alpha": "straight colour; alpha 1 = opaque foreground", "fps": fps, "files": files,
        "settings": result.settings, "consistency_error": result.consistency_error(), **(manifest or {}),
    }
    write_json(folder / "manifest.json", record)
    return files
