"""Layered Sampler: one flow-matching pass over the serialized latent, with our solvers or any ComfyUI SAMPLER.

Our solvers (euler / unipc / dpmpp_2m) run Wan's shifted schedule, or the SIGMAS given. A ComfyUI SAMPLER (from
KSamplerSelect etc.) gets a denoiser D(x, sigma) = x - sigma * v wrapped the way ComfyUI's samplers expect a
model: flow-matching (CONST) model sampling, kept layers as its inpainting mask.
"""
from __future__ import annotations

import contextlib

import torch

from layert2v_core.conditioning import keep_mask
from layert2v_core.layers import ROUTING_POLICIES, LayerSpec
from layert2v_core.offload import blocks_on_demand
from layert2v_core.sampling import (DEFAULT_GUIDANCE, DEFAULT_SHIFT, SOLVERS, cfg_velocity, denoiser_from_velocity,
                                    dit_model_fn, partial_flow_sigmas, sample, seeded_noise, solver_sigmas)

from . import host
from .common import CATEGORY, CONDITIONING, MODEL, LayerT2VInputError, make_latent, read_latent, readable_errors

NODE = "Layered Sampler"
FROM_CHECKPOINT = "checkpoint"
WAN_SCHEDULE = "wan"


class LayerT2VSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From Load LayerT2V Model."}),
                "conditioning": (CONDITIONING, {"tooltip": "From Layer Text Encode."}),
                "latent": ("LATENT", {"tooltip": "From Empty Layered Latent, or Encode Layers to keep given layers."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed; the same seed gives the same layers on any device."}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000,
                                  "tooltip": "Sampling steps (Wan uses 50; 30 is ComfyUI's Wan template)."}),
                "cfg": ("FLOAT", {"default": DEFAULT_GUIDANCE, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale (Wan: 5). 1 skips the negative pass."}),
                "shift": ("FLOAT", {"default": DEFAULT_SHIFT, "min": 0.01, "max": 100.0, "step": 0.1,
                                    "tooltip": "Timestep shift of the flow schedule (Wan T2V: 5; ComfyUI's Wan "
                                               "template: 8). Higher spends more steps at high noise."}),
                "solver": (list(SOLVERS), {"default": "unipc",
                                           "tooltip": "Our ODE solver (Wan ships unipc). Ignored when a ComfyUI "
                                                      "'sampler' is connected."}),
                "routing": ([FROM_CHECKPOINT, *ROUTING_POLICIES], {
                    "default": FROM_CHECKPOINT,
                    "tooltip": "Which prompts each layer attends to. 'checkpoint': the policy the adapter was "
                               "trained with. paper / official / shared override it."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "1 generates from noise; lower keeps more of the input latent "
                                                 "(runs the last steps of a longer schedule). Ignored with 'sigmas'."}),
            },
            "optional": {
                "sampler": ("SAMPLER", {"tooltip": "Any ComfyUI sampler (KSamplerSelect ...), run on the serialized "
                                                   "latent instead of 'solver'. CFG++ samplers are not supported."}),
                "sigmas": ("SIGMAS", {"tooltip": "A schedule from any ComfyUI scheduler node (or LayerT2V "
                                                 "Scheduler), used as given instead of steps/shift/denoise; must "
                                                 "end at 0."}),
            },
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The generated layered latent; decode it with Decode Layers.",)
    SEARCH_ALIASES = ["layers", "ksampler", "wan"]
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "Generates full video, background, foregrounds and alpha mattes in one flow-matching pass."

    def sample(self, model, conditioning, latent, seed: int, steps: int, cfg: float, shift: float, solver: str,
               routing: str, denoise: float, sampler=None, sigmas=None):
        with readable_errors(NODE), torch.no_grad():
            samples, info = read_latent(latent, NODE)
            if conditioning.num_foregrounds != info.num_foregrounds:
                raise LayerT2VInputError(
                    f"{NODE}: layer count mismatch: the latent has {info.num_foregrounds} foreground(s) but Layer "
                    f"Text Encode has {conditioning.num_foregrounds}; set num_foregrounds to the same value on "
                    f"both nodes")
            dit = model.dit
            dit.layer_spec(info.num_foregrounds)  # too few LayerAdaLN rows for N foregrounds -> clear error
            policy = dit.config.routing_policy if routing == FROM_CHECKPOINT else routing
            spec = LayerSpec(info.num_foregrounds, policy)
            text = conditioning.text
            if text.context.shape[-1] != dit.config.text_dim:
                raise LayerT2VInputError(
                    f"{NODE}: the prompts are {text.context.shape[-1]}-dim embeddings but this model takes "
                    f"{dit.config.text_dim}-dim ones; use the umt5 text encoder that belongs to the model")
            if sampler is None and solver not in SOLVERS:
                raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
            if sigmas is not None:
                schedule = solver_sigmas(sigmas, solver) if sampler is None else torch.as_tensor(sigmas).float()
            else:
                schedule = partial_flow_sigmas(steps, shift, denoise)
            known = None
            if info.kept:
                known = (samples, keep_mask(spec, info.kept, samples.shape))
            partial = sigmas is not None or denoise < 1.0
            noise = seeded_noise(samples.shape, seed)
            result = _run(dit, model.offload, spec, text, samples, noise, schedule, cfg, shift, solver, sampler,
                          known, info.strength, partial, seed)
        return (make_latent(result, info),)


def _run(dit, offload: str, spec: LayerSpec, text, samples, noise, schedule, cfg, shift, solver, sampler, known,
         strength, partial, seed) -> torch.Tensor:
    device, home = host.compute_device(), host.offload_device()
    batch = samples.shape[0]
    cond = {"context": _batched(text.context, batch).to(device, dit.dtype),
            "prompt_lens": _batched(text.prompt_lens, batch)}
    uncond = {"context": _batched(text.negative_context, batch).to(device, dit.dtype),
              "prompt_lens": _batched(text.negative_prompt_lens, batch)}

    velocity = cfg_velocity(dit_model_fn(dit, spec, cast=True), cond, uncond, cfg)
    total = len(schedule) - 1
    update = host.progress(total)

    with _placed(dit, offload, device, home):
        noise, samples = noise.to(device), samples.to(device)
        if sampler is None:
            def callback(step, total_steps, x, denoised):
                update(step, spec.split(denoised)["full"])

            known_on_device = None if known is None else (known[0].to(device), known[1].to(device))
            out = sample(velocity, noise, schedule, solver, callback=callback, known=known_on_device,
                         strength=strength, start=samples if partial else None)
        else:
            out = _run_comfy_sampler(sampler, velocity, spec, schedule.float().to(device), noise, samples, known, shift,
                                     update, seed)
    return out.float().cpu()


def _run_comfy_sampler(sampler, velocity, spec, sigmas, noise, samples, known, shift, update, seed) -> torch.Tensor:
    if not hasattr(sampler, "sample"):
        raise LayerT2VInputError(f"{NODE}: 'sampler' is not a ComfyUI SAMPLER (connect KSamplerSelect or similar)")
    guider = _DenoiserForComfy(denoiser_from_velocity(velocity), host.flow_model_sampling(shift))
    denoise_mask = None if known is None else (~known[1]).float().to(noise.device)

    def callback(step, denoised, x, total_steps):
        update(step + 1, spec.split(denoised)["full"])

    extra_args = {"model_options": {}, "seed": seed}
    return sampler.sample(guider, sigmas, extra_args, callback, noise, samples, denoise_mask, True)


class _BaseModelView:
    """What ComfyUI samplers reach as model.inner_model.inner_model: the model sampling and inpaint scaling."""

    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        shape = [sigma.shape[0]] + [1] * (noise.dim() - 1)
        return self.model_sampling.noise_scaling(sigma.reshape(shape), noise, latent_image)


class _PatcherView:
    def __init__(self, base: _BaseModelView):
        self.base = base

    def get_model_object(self, name: str):
        return getattr(self.base, name)


class _DenoiserForComfy:
    """Stands where ComfyUI's CFGGuider stands: called as model(x, sigma, model_options=..., seed=...)."""

    def __init__(self, denoise, model_sampling):
        self.denoise = denoise
        self.inner_model = _BaseModelView(model_sampling)
        self.model_patcher = _PatcherView(self.inner_model)

    def __call__(self, x, sigma, model_options=None, seed=None, **kwargs):
        host.check_interrupted()
        return self.denoise(x, sigma)


@contextlib.contextmanager
def _placed(dit, offload: str, device: torch.device, home: torch.device):
    """The DiT on the compute device for the run, then where the offload choice wants it."""
    if offload == "block by block" and device != home:
        with blocks_on_demand(dit, dit.blocks, device, home):
            yield
        host.release_cache()
        return
    host.make_room(device, dit)
    dit.to(device)
    try:
        yield
    finally:
        if offload != "keep on GPU":
            dit.to(home)
            host.release_cache()


def _batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    return tensor if tensor.shape[0] == batch else tensor.expand(batch, *tensor.shape[1:])


class LayerT2VScheduler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scheduler": ([WAN_SCHEDULE, *host.scheduler_names()], {
                "default": WAN_SCHEDULE,
                "tooltip": "'wan': Wan's own shifted flow schedule. Any other: ComfyUI's scheduler of that name on "
                           "a flow-matching model with this shift (no MODEL needed)."}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 1000, "tooltip": "Sampling steps."}),
            "shift": ("FLOAT", {"default": DEFAULT_SHIFT, "min": 0.01, "max": 100.0, "step": 0.1,
                                "tooltip": "Timestep shift of the flow schedule (Wan T2V: 5)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "Below 1: only the last steps of a longer schedule."}),
        }}

    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("Noise levels from high to 0, for the Layered Sampler's 'sigmas' input.",)
    FUNCTION = "schedule"
    CATEGORY = CATEGORY
    DESCRIPTION = "Sigmas for LayerT2V from Wan's schedule or any ComfyUI scheduler, without loading a MODEL."

    def schedule(self, scheduler: str, steps: int, shift: float, denoise: float):
        with readable_errors("LayerT2V Scheduler"):
            if scheduler == WAN_SCHEDULE:
                return (partial_flow_sigmas(steps, shift, denoise).float(),)
            if scheduler not in host.scheduler_names():
                raise ValueError(f"unknown scheduler {scheduler!r}; outside ComfyUI only {WAN_SCHEDULE!r} exists")
            partial_flow_sigmas(steps, shift, denoise)  # same argument checks as the 'wan' schedule
            full = host.scheduler_sigmas(scheduler, max(steps, round(steps / denoise)), shift)
            return (full[-(steps + 1):].float().cpu(),)


NODE_CLASS_MAPPINGS = {"LayerT2VSampler": LayerT2VSampler, "LayerT2VScheduler": LayerT2VScheduler}
NODE_DISPLAY_NAME_MAPPINGS = {"LayerT2VSampler": "Layered Sampler (LayerT2V)",
                              "LayerT2VScheduler": "LayerT2V Scheduler"}
