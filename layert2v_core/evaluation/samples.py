"""What the evaluation reads: one layered clip per sample folder, from `generate` or in the VidLayer layout.

- A folder written by `python -m layert2v_core generate` (or Save Layers): its manifest.json names the layer files
  (`files`: full, background, fg{i}, alpha{i}) and the prompts (`settings.prompts`: full, fg{i}, bg).
- A VidLayer sample folder (metadata.json, full_video, background, mask[_i]; see train/vidlayer_layout.py), e.g. the
  dataset itself or synthetic ground truth. VidLayer has no foreground clip: its foreground is the full video under
  the matte (the dataset's fg = video x mask), so straight foreground colour = the full video.
A run is a folder of such sample folders (or one sample folder).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..video_io import frames_to_video, read_video

MANIFEST, VIDLAYER_METADATA = "manifest.json", "metadata.json"


@dataclass
class LayeredClip:
    """One sample's layers, channel-first float in [0, 1]: RGB [3, T, H, W], alpha [1, T, H, W] (1 = opaque);
    foregrounds straight (unpremultiplied), 1 at the bottom."""

    name: str
    full: torch.Tensor
    background: torch.Tensor
    foregrounds: list[torch.Tensor]
    alphas: list[torch.Tensor]
    prompts: dict  # {"full": str, "background": str, "foregrounds": [str, ...]}
    source: str  # "generated" or "vidlayer"
    folder: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_foregrounds(self) -> int:
        return len(self.alphas)

    def check(self) -> None:
        """Shapes agree and values are finite: a sample that fails is reported, not scored."""
        shape = tuple(self.full.shape)
        layers = {"full": self.full, "background": self.background,
                  **{f"fg{i}": f for i, f in enumerate(self.foregrounds, 1)},
                  **{f"alpha{i}": a for i, a in enumerate(self.alphas, 1)}}
        for name, video in layers.items():
            if video.dim() != 4 or tuple(video.shape[1:]) != shape[1:]:
                raise ValueError(f"{name} is {tuple(video.shape)}, the full video {shape} ([C, T, H, W])")
            if not torch.isfinite(video).all():
                raise ValueError(f"{name} holds NaN or infinite values")
        if not self.alphas:
            raise ValueError("no foreground alpha")


def _video(path: Path, channels: int) -> torch.Tensor:
    frames, _ = read_video(path)
    video = frames_to_video(torch.from_numpy(frames)).float()
    return video[:3].mean(0, keepdim=True) if channels == 1 else video[:3]


def read_generated(folder: str | os.PathLike) -> LayeredClip:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        count = int(manifest["num_foregrounds"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder / MANIFEST} is not a generate manifest ({error})") from None
    prompts = (manifest.get("settings") or {}).get("prompts") or {}
    try:
        full, background = _video(folder / files["full"], 3), _video(folder / files["background"], 3)
        foregrounds = [_video(folder / files[f"fg{i}"], 3) for i in range(1, count + 1)]
        alphas = [_video(folder / files[f"alpha{i}"], 1) for i in range(1, count + 1)]
    except KeyError as missing:
        raise ValueError(f"{folder / MANIFEST} names no file for layer {missing}") from None
    return LayeredClip(folder.name, full, background, foregrounds, alphas, source="generated", folder=folder,
                       prompts={"full": prompts.get("full", ""), "background": prompts.get("bg", ""),
                                "foregrounds": [prompts.get(f"fg{i}", "") for i in range(1, count + 1)]},
                       info={"seed": (manifest.get("settings") or {}).get("seed")})


def read_vidlayer(folder: str | os.PathLike) -> LayeredClip:
    from train.vidlayer_layout import read_sample_folder  # the layout's one reader, shared with training

    folder = Path(folder)
    entry = read_sample_folder(folder)
    full = _video(entry.full, 3)
    alphas = [_video(mask, 1) for mask in entry.masks]
    return LayeredClip(folder.name, full, _video(entry.background, 3), [full] * len(alphas), alphas,
                       prompts=entry.captions, source="vidlayer", folder=folder)


def read_sample(folder: str | os.PathLike) -> LayeredClip:
    """A generated sample folder or a VidLayer sample folder, whichever it is."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return read_generated(folder)
    if (folder / VIDLAYER_METADATA).is_file():
        return read_vidlayer(folder)
    raise ValueError(f"{folder} holds neither {MANIFEST} (a generated sample) nor {VIDLAYER_METADATA} (VidLayer)")


def is_sample_folder(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or (folder / VIDLAYER_METADATA).is_file()


def sample_folders(run: str | os.PathLike) -> list[Path]:
    """The sample folders of a run: the folder itself if it is one, else its sample sub-folders, sorted."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such folder (give sample folders or folders of them)")
    if is_sample_folder(run):
        return [run]
    folders = sorted(p for p in run.iterdir() if p.is_dir() and is_sample_folder(p))
    if not folders:
        raise FileNotFoundError(f"{run} holds no sample folders (with {MANIFEST} or {VIDLAYER_METADATA})")
    return folders
