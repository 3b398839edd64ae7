"""Apply LayerT2V: ComfyUI's own Wan2.1 MODEL + a LayerT2V adapter -> a layered MODEL for KSampler & co.

The patched MODEL is ComfyUI's own, so whatever loaded or patched it (Load Diffusion Model, GGUF and fp8 loaders,
LoRA stacks, attention backends, caches) still applies. LayerT2V arrives through ComfyUI's extension points:
- the adapter's LoRA as weight patches on `diffusion_model.*`, like any LoRA loader's;
- a diffusion-model wrapper that reads the prompt lengths travelling with Layer Text Encode's CONDITIONING;
- a block replacement per Wan block giving the modulation one LayerAdaLN row per serialized segment;
- the attention override, through which cross-attention is routed (self-attention keeps the chosen backend);
- a sampling wrapper that keeps LATENTs in LayerT2V's normalised space, as every LayerT2V node reads them.
The math is `layert2v_core.native_wan`'s; this file only connects it.
"""
from __future__ import annotations

import torch

from layert2v_core.checkpoints import load_adapter
from layert2v_core.layers import ROUTING_POLICIES
from layert2v_core.model_folder import DEMO_DIT
from layert2v_core.native_wan import PROMPT_LENS_KEY, LayeredWan, layer_modulation, lora_state_dict, patch_grid
from layert2v_core.vae import load_vae

from . import host
from .common import CATEGORY, VAE, LayerT2VInputError, LoadedVAE, readable_errors
from .loaders import BUILTIN, _apply_adapter_path, _apply_choices, _choices, alpha_vae

NODE = "Apply LayerT2V"
FROM_CHECKPOINT = "checkpoint"
WRAPPER_KEY = "layert2v"
STATE_KEY = "layert2v_call"  # the current forward's LayeredCall, in transformer_options


class LayerT2VApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Wan2.1 T2V 1.3B from ComfyUI's own loaders (Load Diffusion Model, a GGUF "
                                           "or fp8 loader), LoRA loaders and other model patches included."}),
            "adapter_name": (_apply_choices(), {
                "tooltip": "LayerT2V adapter from models/layert2v (or models/loras): the official PEFT folder's "
                           "adapter_model file or a LayerT2V .safetensors adapter; a merged LayerT2V checkpoint "
                           f"gives its LayerAdaLN and routing. '{BUILTIN}': the demo's, for its DiT "
                           f"({DEMO_DIT.name} in Load Diffusion Model)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "Strength of the adapter's LoRA (1 as trained). LayerAdaLN and the "
                                              "routing always apply in full."}),
            "routing": ([FROM_CHECKPOINT, *ROUTING_POLICIES], {
                "default": FROM_CHECKPOINT,
                "tooltip": "Which prompts each layer attends to. 'checkpoint': the policy the adapter was trained "
                           "with. paper / official / shared override it."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Wan model as a LayerT2V model: sample it with KSampler / SamplerCustomAdvanced on an "
                       "Empty Layered Latent, prompts from Layer Text Encode.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Turns ComfyUI's own Wan2.1 T2V model into LayerT2V (LoRA, LayerAdaLN, layered cross-attention) "
                   "so native samplers generate full video, background, foregrounds and alpha in one pass.")
    SEARCH_ALIASES = ["layert2v", "layers", "alpha", "matte", "wan layers", "lora"]

    def apply(self, model, adapter_name: str, strength: float, routing: str):
        with readable_errors(NODE):
            wan = _wan_model(model)
            adapter = load_adapter(_apply_adapter_path(adapter_name))
            table = layer_modulation(adapter, wan.dim)
            policy = adapter.routing_policy if routing == FROM_CHECKPOINT else routing
            if policy not in ROUTING_POLICIES:
                raise ValueError(f"routing must be one of {[FROM_CHECKPOINT, *ROUTING_POLICIES]}, got {routing!r}")
            patched = _with_lora(model, lora_state_dict(adapter), strength, adapter.source)
        layered = LayeredWan(table, policy)
        _add_block_replacements(patched, len(wan.blocks))
        import comfy.patcher_extension as extension
        patched.add_wrapper_with_key(extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _LayeredForward(layered))
        patched.add_wrapper_with_key(extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _in_layer_latent_space)
        return (patched,)


def _wan_model(model):
    """ComfyUI's WanModel inside a MODEL; a clear error for anything else."""
    import comfy.ldm.wan.model as wan_module
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if type(inner) is not wan_module.WanModel or inner.img_emb is not None:  # VACE, I2V ... are other models
        found = type(inner).__name__ if inner is not None else type(model).__name__
        raise LayerT2VInputError(f"{NODE}: 'model' must be Wan2.1 text-to-video (Load Diffusion Model with a Wan2.1 "
                                 f"T2V file), got {found}")
    return inner


def _with_lora(model, lora: dict, strength: float, source: str):
    """A clone of `model` with the LoRA as weight patches, every adapter key checked against the model."""
    import comfy.lora
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    targets = {k.rsplit(".", 2)[0] if ".lora_" in k else k.rsplit(".", 1)[0] for k in lora}
    missing = sorted(t for t in targets if t not in key_map)
    if missing:
        raise LayerT2VInputError(f"{NODE}: {source} does not fit this model: it targets {missing[:5]}, which the "
                                 f"model does not have; pick the adapter trained for this base model")
    patched = model.clone()
    patched.add_patches(comfy.lora.load_lora(lora, key_map), strength)
    return patched


def _add_block_replacements(model, num_blocks: int) -> None:
    """Each Wan block gets its segments' modulation rows, then runs as before (or through an earlier replacement)."""
    existing = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for i in range(num_blocks):
        model.set_model_patch_replace(_SegmentModulation(existing.get(("double_block", i))), "dit", "double_block", i)


class _SegmentModulation:
    def __init__(self, previous):
        self.previous = previous

    def __call__(self, args: dict, extra: dict) -> dict:
        call = args["transformer_options"].get(STATE_KEY)
        if call is not None:
            args = {**args, "vec": call.modulation(args["vec"])}
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


class _LayeredForward:
    """DIFFUSION_MODEL wrapper: one LayeredCall per forward, handed to blocks and attention in transformer_options."""

    def __init__(self, layered: LayeredWan):
        self.layered = layered

    def __call__(self, executor, x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs):
        prompt_lens = kwargs.pop(PROMPT_LENS_KEY, None)
        if prompt_lens is None:
            raise LayerT2VInputError(f"{NODE}: this model is a LayerT2V model, but its prompts did not come from Layer "
                                     f"Text Encode; connect its 'positive' and 'negative' outputs to the sampler")
        with readable_errors(NODE):
            call, context = self.layered.prepare(prompt_lens, context, *patch_grid(x.shape[2:],
                                                                                   executor.class_obj.patch_size))
        options = {**transformer_options, STATE_KEY: call,
                   "optimized_attention_override": _RoutedAttention(
                       transformer_options.get("optimized_attention_override"))}
        return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)


class _RoutedAttention:
    """Attention override: cross-attention of the visual tokens routed; everything else as it was."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, func, *args, **kwargs):
        call = (kwargs.get("transformer_options") or {}).get(STATE_KEY)
        q, k, v = args[:3]
        if call is not None and call.is_cross_attention(q, k) and not kwargs.get("skip_reshape", False):
            heads = kwargs["heads"] if "heads" in kwargs else args[3]
            return call.cross_attention(q, k, v, heads)
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)


def _in_layer_latent_space(executor, noise, latent_image, *args, **kwargs):
    """OUTER_SAMPLE wrapper: LayerT2V LATENTs are already normalised; ComfyUI normalises what it is given (unless all
    zero) and returns the VAE's raw space, so the latent goes in through the inverse and comes back normalised."""
    latent_format = executor.class_obj.model_patcher.get_model_object("latent_format")
    if torch.count_nonzero(latent_image) > 0:
        latent_image = latent_format.process_out(latent_image)
    return latent_format.process_in(executor(noise, latent_image, *args, **kwargs))


class LayerT2VAlphaVAE:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "ComfyUI's Wan2.1 VAE (Load VAE with wan_2.1_vae.safetensors)."}),
            "alpha_vae_name": (_choices(host.ADAPTER_KIND, "vae"), {
                "tooltip": "LayerT2V alpha-matte VAE adapter from models/layert2v (or models/vae): the official "
                           "mask_vae_lora.pt or a LayerT2V mask VAE .safetensors, made for this Wan VAE; or an "
                           "official run's mask_decoder.pt ('downsample-project') or mask_vae.pt with "
                           "mask_vae_projects.pt beside it ('mask-vae-project' / 'mask-vae-joint')."}),
        }}

    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("RGB + alpha VAEs for Encode Layers and Decode Layers.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("The LayerT2V VAE pair from a VAE ComfyUI already loaded: its Wan2.1 weights, plus the alpha-matte "
                   "adapter on top, so the Wan VAE file is read once.")
    SEARCH_ALIASES = ["alpha", "matte", "RGBA", "layers", "vae"]

    def load(self, vae, alpha_vae_name: str):
        node = "LayerT2V Alpha VAE"
        with readable_errors(node):
            inner = getattr(vae, "first_stage_model", None)
            if inner is None:
                raise LayerT2VInputError(f"{node}: 'vae' is not a ComfyUI VAE (connect Load VAE)")
            rgb = load_vae(inner.state_dict(), dtype=host.default_dtype(), device=host.offload_device())
            mask_vae = alpha_vae(rgb, alpha_vae_name)
        return (LoadedVAE(rgb, mask_vae, None),)


def native_conditioning(context: torch.Tensor, prompt_lens: torch.Tensor) -> list:
    """A ComfyUI CONDITIONING for one packed layered context: its prompt lengths ride along as a model input."""
    lens = prompt_lens.long().reshape(1, -1)
    try:
        from comfy.conds import CONDRegular
    except ImportError:  # outside ComfyUI (tests, scripts): the same layout, plain tensors
        model_conds = {PROMPT_LENS_KEY: lens}
    else:
        model_conds = {PROMPT_LENS_KEY: CONDRegular(lens)}
    return [[context.reshape(1, *context.shape[-2:]), {"model_conds": model_conds}]]


NODE_CLASS_MAPPINGS = {"LayerT2VApply": LayerT2VApply, "LayerT2VAlphaVAE": LayerT2VAlphaVAE}
NODE_DISPLAY_NAME_MAPPINGS = {"LayerT2VApply": "Apply LayerT2V", "LayerT2VAlphaVAE": "LayerT2V Alpha VAE"}
