"""Loader nodes: the LayerT2V DiT (+ adapter), the RGB and alpha VAEs, the umt5 text encoder."""
from __future__ import annotations

from pathlib import Path

from layert2v_core.checkpoints import load_dit
from layert2v_core.dit import ROPE_MODES
from layert2v_core.mask_modes import choose_mask_mode, load_mask_mode
from layert2v_core.model_folder import DEMO_MODEL_LABEL, DEMO_MODEL_NAME, demo_model_folder, find_components
from layert2v_core.text import load_text_encoder
from layert2v_core.vae import load_vae
from layert2v_core.vae_tiling import Tiling

from . import host
from .common import (CATEGORY, DTYPES, MODEL, OFFLOAD_CHOICES, TEXT_ENCODER, VAE, LoadedModel, LoadedVAE,
                     readable_errors)

NONE = "none"
# Alpha choices without a file: the official mask modes that decode mattes with no network of their own.
FILELESS_MASK_MODES = {"none: plain Wan VAE (official 'vae' mode)": "vae",
                       "none: downsampled (official 'downsample' mode)": "downsample"}
AUTO = "auto"
# The alpha VAE of an official run, found beside the adapter of the model connected to the VAE loader.
BESIDE_ADAPTER = "auto: the mask files beside the model's adapter"
ROPE_CHOICES = [AUTO, *ROPE_MODES]
# The embedded demo model's entry in every loader list, so the example workflows run with no downloads.
BUILTIN = DEMO_MODEL_LABEL


def _choices(*kinds: str) -> list[str]:
    """Files of these model kinds, then the built-in demo part (last, so a user's own files come first)."""
    names = [name for kind in kinds for name in host.list_models(kind)]
    return list(dict.fromkeys(names)) + ([BUILTIN] if demo_model_folder() is not None else [])


def _model_file(name: str, part: str, *kinds: str) -> Path:
    """The built-in demo's part, or the named file from the first of these kinds that holds it."""
    if name == BUILTIN:
        folder = demo_model_folder()
        if folder is None:
            raise FileNotFoundError(f"the built-in demo model is missing from this install (models/{DEMO_MODEL_NAME}"
                                    f"/); reinstall the node pack or pick a model file")
        return getattr(find_components(folder, required=(part,)), part)
    for kind in kinds[:-1]:
        try:
            return host.model_path(kind, name)
        except FileNotFoundError:
            pass
    return host.model_path(kinds[-1], name)


def _alpha_choices() -> list[str]:
    """Alpha VAE files, then the modes that need no file, then the built-in demo's (still last)."""
    files = _choices(host.ADAPTER_KIND, "vae")
    builtin = files[-1:] if files[-1:] == [BUILTIN] else []
    return files[:len(files) - len(builtin)] + [BESIDE_ADAPTER, *FILELESS_MASK_MODES] + builtin


def _adapter_choices() -> list[str]:
    return list(dict.fromkeys(host.list_models(host.ADAPTER_KIND) + host.list_models("loras")))


def _apply_choices() -> list[str]:
    """Apply LayerT2V's adapters: the user's, then the built-in demo's (its merged DiT holds its LayerAdaLN)."""
    return _adapter_choices() + ([BUILTIN] if demo_model_folder() is not None else [])


def _apply_adapter_path(name: str) -> Path:
    return _model_file(name, "dit", "diffusion_models") if name == BUILTIN else _adapter_path(name)


def _adapter_path(name: str) -> Path:
    """Our kind first, then loras; an official PEFT folder is picked through its adapter_model file."""
    path = _model_file(name, "adapter", host.ADAPTER_KIND, "loras")
    if path.name.startswith("adapter_model") and (path.parent / "adapter_config.json").is_file():
        return path.parent
    return path


class LayerT2VModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_choices("diffusion_models"), {
                "tooltip": "Wan2.1 T2V 1.3B from models/diffusion_models: the original, ComfyUI (fp16/bf16/fp8) or "
                           f"diffusers layout, or a merged LayerT2V checkpoint. '{BUILTIN}': the tiny model shipped "
                           "with the node pack (synthetic shapes only, 64x64, 17 frames; adapter 'none')."}),
            "adapter_name": ([NONE] + _adapter_choices(), {
                "tooltip": "LayerT2V adapter from models/layert2v (or models/loras): the official PEFT folder's "
                           "adapter_model file (its ema/ema_model.pt for the EMA weights, lora_weights.pt for the "
                           "fallback) or a LayerT2V .safetensors adapter. 'none' for a merged model."}),
            "weight_dtype": (list(DTYPES), {
                "default": "default",
                "tooltip": "Compute dtype of the weights. 'default' keeps the file's dtype (fp8 files run in bf16) "
                           "on a GPU and uses fp32 on a CPU."}),
            "offload": (list(OFFLOAD_CHOICES), {
                "default": "offload between runs",
                "tooltip": "keep on GPU: fastest, holds VRAM between runs. offload between runs: on the GPU only while "
                           "sampling. block by block: one transformer block on the GPU at a time, for small cards."}),
        }, "optional": {
            "rope": (ROPE_CHOICES, {
                "default": AUTO,
                "tooltip": "auto: what the adapter records (an official run's config.yaml use_4d_rope, our adapter's "
                           "metadata), else Wan's 3D RoPE. 4d: the official layer-time-height-width RoPE."}),
        }}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The LayerT2V DiT for the Layered Sampler.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the Wan2.1 DiT with the LayerT2V adapter (LayerAdaLN + layered cross-attention)."

    def load(self, model_name: str, adapter_name: str, weight_dtype: str, offload: str, rope: str | None = None):
        with readable_errors("Load LayerT2V Model"):
            if offload not in OFFLOAD_CHOICES:
                raise ValueError(f"offload must be one of {list(OFFLOAD_CHOICES)}, got {offload!r}")
            path = _model_file(model_name, "dit", "diffusion_models")
            adapter = None if adapter_name == NONE else _adapter_path(adapter_name)
            if rope not in (None, *ROPE_CHOICES):
                raise ValueError(f"rope must be one of {ROPE_CHOICES}, got {rope!r}")
            dit = load_dit(path, dtype=DTYPES[weight_dtype] or host.default_dtype(), device=host.offload_device(),
                           adapter=adapter, rope=None if rope in (None, AUTO) else rope)
        return (LoadedModel(dit, offload, model_name, adapter),)


class LayerT2VVAELoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (_choices("vae"), {
                "tooltip": "Wan2.1 VAE from models/vae (wan_2.1_vae.safetensors or Wan2.1_VAE.pth), or the built-in "
                           "demo model's."}),
            "alpha_vae_name": (_alpha_choices(), {
                "tooltip": "LayerT2V alpha-matte VAE adapter from models/layert2v (or models/vae): the official "
                           "mask_vae_lora.pt or a LayerT2V mask VAE .safetensors. It shares the RGB VAE's weights, "
                           "so pick the one made for that VAE (the built-in demo's goes with the built-in VAE). "
                           "An official run's mask_decoder.pt (with mask_encoder.pt beside it): its "
                           "'downsample-project' mode; its mask_vae.pt (with mask_vae_projects.pt beside it): the "
                           "'mask-vae-project' / 'mask-vae-joint' modes (a mask-vae-project run saves no "
                           "mask_vae.pt: put its stage-1 file there). 'none: ...': the official modes that need no "
                           f"file. '{BESIDE_ADAPTER}': what an official run keeps beside the adapter of the model "
                           "connected below (its config.yaml's mask_mode, else its files, else the plain Wan VAE)."}),
            "tiling": (["off", "on"], {
                "default": "off",
                "tooltip": "Encode/decode in overlapping spatial tiles to bound VRAM (slightly slower; seams are "
                           "blended)."}),
            "tile_size": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 8,
                                  "tooltip": "Tile side in pixels (multiple of 8), used when tiling is on."}),
            "tile_overlap": ("INT", {"default": 64, "min": 0, "max": 2048, "step": 8,
                                     "tooltip": "Overlap between tiles in pixels (multiple of 8, below the tile "
                                                "size)."}),
        }, "optional": {
            "model": (MODEL, {"tooltip": f"Only for '{BESIDE_ADAPTER}': the Load LayerT2V Model whose official "
                                         "adapter folder holds the mask files."}),
        }}

    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("RGB + alpha VAEs for encoding and decoding layers.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the Wan2.1 video VAE and the LayerT2V alpha-matte VAE on top of it."

    def load(self, vae_name: str, alpha_vae_name: str, tiling: str, tile_size: int, tile_overlap: int,
             model: LoadedModel | None = None):
        with readable_errors("Load LayerT2V VAE"):
            if alpha_vae_name == BESIDE_ADAPTER and (model is None or model.adapter is None):
                raise ValueError(f"'{BESIDE_ADAPTER}' reads the adapter of a Load LayerT2V Model: connect its model "
                                 f"output (with an adapter picked) to 'model', or pick the alpha VAE file here")
            tile = Tiling(tile_size, tile_overlap) if tiling == "on" else None
            vae = load_vae(_model_file(vae_name, "vae", "vae"), dtype=host.default_dtype(),
                           device=host.offload_device())
            if alpha_vae_name == BESIDE_ADAPTER:
                beside = find_components(None, required=(), adapter=model.adapter)
                mode, file = choose_mask_mode(beside.mask_vae, beside.adapter)
                mask_vae = load_mask_mode(vae, mode, file, adapter=beside.adapter)
            else:
                mask_vae = alpha_vae(vae, alpha_vae_name)
        return (LoadedVAE(vae, mask_vae, tile),)


def alpha_vae(vae, name: str):
    """The alpha VAE (any official mask mode) chosen by `name` in a loader's list, on the RGB VAE `vae`."""
    if name in FILELESS_MASK_MODES:
        return load_mask_mode(vae, FILELESS_MASK_MODES[name])
    return load_mask_mode(vae, None, _model_file(name, "mask_vae", host.ADAPTER_KIND, "vae"))


class LayerT2VTextEncoderLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (_choices("text_encoders"), {
                "tooltip": "umt5-xxl from models/text_encoders: umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled "
                           "(ComfyUI's files) or Wan's models_t5_umt5-xxl-enc-bf16.pth; or the built-in demo model's "
                           "small umt5, which goes with the built-in DiT."}),
            "dtype": (list(DTYPES), {"default": "default",
                                     "tooltip": "Compute dtype; 'default' keeps the file's (fp8 files run in bf16) "
                                                "on a GPU and uses fp32 on a CPU."}),
        }}

    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The umt5 encoder for Layer Text Encode.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads umt5-xxl for LayerT2V prompts. Already using ComfyUI's Load CLIP (type wan)? Connect that "
                   "CLIP to Layer Text Encode instead and skip this loader.")

    def load(self, text_encoder_name: str, dtype: str):
        with readable_errors("Load LayerT2V Text Encoder"):
            encoder = load_text_encoder(_model_file(text_encoder_name, "text_encoder", "text_encoders"),
                                        dtype=DTYPES[dtype] or host.default_dtype(), device=host.offload_device())
        return (encoder,)


NODE_CLASS_MAPPINGS = {
    "LayerT2VModelLoader": LayerT2VModelLoader,
    "LayerT2VVAELoader": LayerT2VVAELoader,
    "LayerT2VTextEncoderLoader": LayerT2VTextEncoderLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LayerT2VModelLoader": "Load LayerT2V Model",
    "LayerT2VVAELoader": "Load LayerT2V VAE",
    "LayerT2VTextEncoderLoader": "Load LayerT2V Text Encoder",
}
