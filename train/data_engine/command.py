"""External-command backends: plug in a matting or removal tool that has no library (MatAnyone, Gen-Omnimatte,
MiniMax-Remover) through a command line run once per video.

The template's placeholders are filled with paths in a fresh temporary folder (only those the template names are
written):

    {video}         the clip as H.264 mp4            {frames}         the clip as a folder of PNG frames
    {mask}          first-frame mask, PNG (matting)  {alpha}          union alpha as mp4 (removal)
    {alpha_frames}  union alpha as PNG frames        {out}            an empty folder for the result

Matting writes `{out}/alpha` (PNG frames) or `{out}/alpha.mp4`/`.webm`/`.mov` (white = foreground); removal writes
`{out}/background` or `{out}/background.mp4`/... . A result at another size is resized to the clip's, one longer than
the clip is cut to it. A command that fails, or writes nothing usable, rejects the video with its exit status and the
end of its error output. `tools/` holds adapters for MatAnyone (matting) and Generative Omnimatte's Casper (removal).
"""
from __future__ import annotations

import shlex
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from layert2v_core.video_io import read_video, write_video
from .stages import Rejection

RESULT_SUFFIXES = ("", ".mp4", ".webm", ".mov")
FPS = 16.0  # tools read frames, not timing; the rate only fills the container's field


def _write_inputs(template: str, folder: Path, videos: dict[str, torch.Tensor]) -> dict[str, str]:
    """Write each input the template names; returns the placeholder values."""
    paths = {"out": folder / "out"}
    paths["out"].mkdir()
    for name, (suffix, frames) in videos.items():
        if "{" + name + "}" in template:
            paths[name] = folder / f"{name}{suffix}"
            if suffix == ".png":
                from PIL import Image
                Image.fromarray((frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()).save(paths[name])
            else:
                write_video(paths[name], frames, FPS)
    # placeholders the template does not name still get a value so format() succeeds
    return {name: shlex.quote(str(paths.get(name, folder / name))) for name in (*videos, "out")}


def _run(template: str, values: dict[str, str], stage: str, timeout: float | None) -> None:
    try:
        result = subprocess.run(shlex.split(template.format(**values)), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Rejection(stage, f"the {stage} command ran past {timeout} s") from None
    except OSError as error:
        raise Rejection(stage, f"the {stage} command could not start: {error}") from None
    if result.returncode != 0:
        raise Rejection(stage, f"the {stage} command exited with {result.returncode}: "
                               f"{(result.stderr or result.stdout).strip()[-300:]}")


def _read_result(out: Path, name: str, stage: str, like: torch.Tensor) -> torch.Tensor:
    """The tool's result as [T, H, W, 3] at the size of `like` [T, H, W, ...]: tools that work at their own
    resolution are resized back, and those that pad the clip in time give their first T frames."""
    for suffix in RESULT_SUFFIXES:
        path = out / f"{name}{suffix}"
        if path.exists():
            try:
                frames, _ = read_video(path)
            except (OSError, ValueError, RuntimeError) as error:
                raise Rejection(stage, f"the {stage} command's {path.name} is unreadable: {error}") from None
            count, height, width = like.shape[:3]
            if frames.shape[0] < count:
                raise Rejection(stage, f"the {stage} command's {path.name} has {frames.shape[0]} frames, the clip "
                                       f"{count}")
            frames = torch.from_numpy(frames[:count, ..., :3].copy())
            if frames.shape[1:3] != (height, width):
                frames = F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                       align_corners=False, antialias=True).permute(0, 2, 3, 1)
            return frames
    raise Rejection(stage, f"the {stage} command wrote no {name} (or {name}.mp4) into its output folder")


def check_template(template: str, placeholders: tuple[str, ...], stage: str) -> str:
    """Stop before any video is read if the template names a placeholder this stage does not fill."""
    try:
        template.format(**{name: name for name in placeholders})
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"the {stage} command {template!r} has a bad placeholder ({error}); it may use "
                         + ", ".join("{" + name + "}" for name in placeholders)) from None
    if "{out}" not in template:
        raise ValueError(f"the {stage} command {template!r} must name {{out}}, the folder it writes its result to")
    return template


class CommandMatter:
    def __init__(self, template: str, timeout: float | None = None):
        self.template = check_template(template, ("video", "frames", "mask", "out"), "matting")
        self.timeout = timeout

    def matte(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        with tempfile.TemporaryDirectory(prefix="matte-") as folder:
            inputs = {"video": (".mp4", frames), "frames": ("", frames),
                      "mask": (".png", first_mask[..., None].expand(*first_mask.shape, 3))}
            values = _write_inputs(self.template, Path(folder), inputs)
            _run(self.template, values, "matting", self.timeout)
            return _read_result(Path(folder) / "out", "alpha", "matting", frames).mean(-1)


class CommandRemover:
    needs_static_camera = False

    def __init__(self, template: str, timeout: float | None = None):
        self.template = check_template(template, ("video", "frames", "alpha", "alpha_frames", "out"), "removal")
        self.timeout = timeout

    def remove(self, frames: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        with tempfile.TemporaryDirectory(prefix="remove-") as folder:
            grey = alpha[..., None].expand(*alpha.shape, 3)
            inputs = {"video": (".mp4", frames), "frames": ("", frames), "alpha": (".mp4", grey),
                      "alpha_frames": ("", grey)}
            values = _write_inputs(self.template, Path(folder), inputs)
            _run(self.template, values, "removal", self.timeout)
            return _read_result(Path(folder) / "out", "background", "removal", frames)
