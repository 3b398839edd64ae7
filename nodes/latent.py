"""Empty Layered Latent: the zero serialized latent [1, 16, (2+2N)*T', H/8, W/8] the sampler fills."""
from __future__ import annotations

import torch

from layert2v_core.layers import MAX_FOREGROUNDS, LayerSpec
from layert2v_core.pipeline import SPATIAL_STRIDE, check_video_size

from .common import CATEGORY, LayerInfo, latent_frames, make_latent, readable_errors

LATENT_CHANNELS = 16


class LayerT2VEmptyLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 672, "min": 16, "max": 4096, "step": 16,
                              "tooltip": "Video width in pixels, a multiple of 16 (LayerT2V was trained at 672)."}),
            "height": ("INT", {"default": 384, "min": 16, "max": 4096, "step": 16,
                               "tooltip": "Video height in pixels, a multiple of 16 (LayerT2V was trained at 384)."}),
            "frames": ("INT", {"default": 41, "min": 1, "max": 1025, "step": 4,
                               "tooltip": "Frames per layer, 4k+1 (1, 5, ..., 41, ..., 81); 41 as in LayerT2V."}),
            "num_foregrounds": ("INT", {"default": 1, "min": 1, "max": MAX_FOREGROUNDS,
                                        "tooltip": "Foreground layers to generate (1-3); the model must support as "
                                                   "many, and Layer Text Encode must say the same."}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Serialized layered latent [full | background | fg1 | alpha1 | ...] along time.",)
    SEARCH_ALIASES = ["layers", "empty latent", "video latent"]
    FUNCTION = "generate"
    CATEGORY = CATEGORY
    DESCRIPTION = "An empty layered latent: full video, background and N foreground + alpha segments along time."

    def generate(self, width: int, height: int, frames: int, num_foregrounds: int):
        with readable_errors("Empty Layered Latent"):
            check_video_size(frames, height, width)
            spec = LayerSpec(num_foregrounds)
            shape = (1, LATENT_CHANNELS, spec.num_segments * latent_frames(frames), height // SPATIAL_STRIDE,
                     width // SPATIAL_STRIDE)
        return (make_latent(torch.zeros(shape), LayerInfo(num_foregrounds, frames)),)


NODE_CLASS_MAPPINGS = {"LayerT2VEmptyLatent": LayerT2VEmptyLatent}
NODE_DISPLAY_NAME_MAPPINGS = {"LayerT2VEmptyLatent": "Empty Layered Latent (LayerT2V)"}
