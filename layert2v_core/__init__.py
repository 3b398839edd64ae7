"""LayerT2V core: the model, sampling, layer editing, compositing and video I/O, usable without ComfyUI."""
from __future__ import annotations

import importlib

from .layers import LayerSpec

# Public names and the module that defines each; imported on first use so `import layert2v_core` stays light.
_LAZY = {
    "load_dit": "checkpoints",
    "WanDiT": "dit",
    "DiTConfig": "dit",
    "load_vae": "vae",
    "WanVAE": "vae",
    "VAEConfig": "vae",
    "Tiling": "vae_tiling",
    "MaskVAE": "mask_vae",
    "load_mask_vae": "mask_vae",
    "save_mask_vae": "mask_vae",
    "encode_layers": "layered_latent",
    "decode_layers": "layered_latent",
    "load_text_encoder": "text",
    "flow_sigmas": "sampling",
    "sample": "sampling",
    "cfg_velocity": "sampling",
    "seeded_noise": "sampling",
    "SOLVERS": "sampling",
    "keep_mask": "conditioning",
    "known_latent": "conditioning",
    "premultiply": "composite",
    "unpremultiply": "composite",
    "recompose": "composite",
    "over_background": "composite",
    "consistency_error": "composite",
    "read_video": "video_io",
    "write_video": "video_io",
    "TextEncoder": "text",
    "LayeredContext": "text",
    "encode_layer_prompts": "text",
    "batch_layered_contexts": "text",
    "WAN_NEGATIVE_PROMPT": "text",
    "TextEmbeddingCache": "text_cache",
}

__all__ = ["LayerSpec", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
