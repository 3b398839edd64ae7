"""Composite Layers: the generated foregrounds over a new background (any IMAGE batch), or over their own."""
from __future__ import annotations

import torch

from layert2v_core.composite import fit_background, over_background

from .common import CATEGORY, LAYERS, image_to_video, readable_errors, video_to_image


class LayerT2VComposite:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "layers": (LAYERS, {"tooltip": "From Decode Layers."}),
            },
            "optional": {
                "background": ("IMAGE", {
                    "tooltip": "New background: one image (held for every frame) or as many frames as the layers; "
                               "resized to the layers' size. Not connected: the generated background "
                               "(recomposition, which should match the full video)."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Every foreground over the background, foreground 1 at the bottom.",)
    SEARCH_ALIASES = ["alpha", "matte", "RGBA", "layers", "over", "background replacement"]
    FUNCTION = "composite"
    CATEGORY = CATEGORY
    DESCRIPTION = "Background replacement: puts all generated foregrounds (with their alpha) over a new background."

    def composite(self, layers, background=None):
        with readable_errors("Composite Layers"), torch.no_grad():
            _, frames, height, width = layers.full.shape
            if background is None:
                base = layers.background
            else:
                base = fit_background(image_to_video(background[..., :3]), frames, height, width)
            video = over_background(base, layers.foregrounds, layers.alphas)
        return (video_to_image(video.clamp(0, 1)),)


NODE_CLASS_MAPPINGS = {"LayerT2VComposite": LayerT2VComposite}
NODE_DISPLAY_NAME_MAPPINGS = {"LayerT2VComposite": "Composite Layers (LayerT2V)"}
