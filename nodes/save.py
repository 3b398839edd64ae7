"""Save Layers: every layer to the output folder (videos, RGBA files, manifest) with an animated preview in the UI."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from layert2v_core.export import WEBP_PREVIEW, save_layers
from layert2v_core.paths import inside

from . import host
from .common import CATEGORY, LAYERS, LayerT2VInputError, readable_errors

RGBA_CHOICES = {
    "webm (VP9 alpha)": ("webm",),
    "mov (ProRes 4444)": ("mov",),
    "png sequence": ("png",),
    "webm + mov": ("webm", "mov"),
    "all": ("webm", "mov", "png"),
}


class LayerT2VSaveLayers:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "layers": (LAYERS, {"tooltip": "From Decode Layers."}),
            "filename_prefix": ("STRING", {"default": "LayerT2V/layers",
                                           "tooltip": "Folder name inside ComfyUI's output folder; a counter is "
                                                      "appended (layers_00001, ...). Sub-folders with '/'."}),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0,
                              "tooltip": "Frame rate of the written videos (Wan2.1 generates 16 fps)."}),
            "rgba_format": (list(RGBA_CHOICES), {
                "default": "webm (VP9 alpha)",
                "tooltip": "Files for each foreground with its alpha: VP9 webm with alpha, ProRes 4444 .mov, or an "
                           "RGBA PNG sequence. full/background/fg/alpha .mp4 and manifest.json are always written."}),
        }}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    SEARCH_ALIASES = ["alpha", "matte", "RGBA", "layers", "save video", "webm", "prores"]
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Writes full.mp4, background.mp4, fg{i}.mp4, alpha{i}.mp4 (white = opaque), RGBA files and "
                   "manifest.json into one new folder of the output directory.")

    def save(self, layers, filename_prefix: str, fps: float, rgba_format: str):
        with readable_errors("Save Layers"), torch.no_grad():
            if rgba_format not in RGBA_CHOICES:
                raise ValueError(f"rgba_format must be one of {list(RGBA_CHOICES)}, got {rgba_format!r}")
            root = host.output_directory()
            folder = next_folder(root, filename_prefix)
            save_layers(layers, folder, fps=float(fps), rgba_formats=RGBA_CHOICES[rgba_format],
                        manifest={"mask_output": "Decode Layers' MASK output is 1 - alpha (ComfyUI convention)"},
                        webp_preview=True)
        subfolder = folder.relative_to(root).as_posix()
        return {"ui": {"images": [{"filename": WEBP_PREVIEW, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}


def next_folder(root: Path, prefix: str) -> Path:
    """root/prefix_00001 (the next free number), refusing prefixes that do not name a place inside the output folder."""
    try:
        target = inside(root, prefix.strip(), "filename_prefix", reserve=len("_00000"),
                        root_name="the output folder")
    except ValueError as error:
        raise LayerT2VInputError(f"Save Layers: {error}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(target.name) + r"_(\d+)$")
    used = [int(m.group(1)) for p in target.parent.iterdir() if (m := pattern.match(p.name))]
    number = max(used, default=0) + 1
    while True:  # mkdir claims the number even if another run picks the same one at the same time
        folder = target.parent / f"{target.name}_{number:05d}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


NODE_CLASS_MAPPINGS = {"LayerT2VSaveLayers": LayerT2VSaveLayers}
NODE_DISPLAY_NAME_MAPPINGS = {"LayerT2VSaveLayers": "Save Layers (LayerT2V)"}
