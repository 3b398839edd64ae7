"""LayerT2V generation: layer prompts (and optionally layers to keep) in, decoded layers out.

One sampling pass produces the serialized latent [full | bg | fg_1 | mask_1 | ...]; it is decoded by the RGB VAE
(full, bg, premultiplied foregrounds) and the alpha VAE (mattes). Components visit the compute device only while
they work — text encoder, then DiT, then the VAEs — so with offloading the peak is the largest one, not the sum.

Layer-conditioned generation: `keep={"bg": video}` (or fg_i with mask_i, or full) encodes those layers into their
segments and holds them on their known trajectory while the others are generated (`strength` lets them move).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from .composite import consistency_error, premultiply
from .conditioning import known_latent
from .layered_latent import check_finite_latent, check_keep, decode_videos, encode_videos
from .layers import LayerSpec
from .sampling import SOLVERS, cfg_velocity, dit_model_fn, flow_sigmas, sample, seeded_noise
from .text import encode_layer_prompts

TEMPORAL_STRIDE, SPATIAL_STRIDE, DIT_MULTIPLE = 4, 8, 16


@dataclass
class LayeredVideo:
    """One generated sample, channel-first in [0, 1]: RGB [3, T, H, W], alpha [1, T, H, W] (1 = opaque)."""

    full: torch.Tensor
    background: torch.Tensor
    foregrounds: list[torch.Tensor]  # straight (unpremultiplied) colour, what compositors expect in files
    alphas: list[torch.Tensor]
    latent: torch.Tensor  # the serialized latent [C, S*T', H', W'] the layers were decoded from
    spec: LayerSpec
    settings: dict = field(default_factory=dict)

    def rgba(self, index: int = 1) -> torch.Tensor:
        """Foreground `index` (1-based) with its alpha as straight RGBA [4, T, H, W]."""
        return torch.cat([self.foregrounds[index - 1], self.alphas[index - 1]], dim=0)

    def consistency_error(self) -> float:
        """mean |fg_N over ... over fg_1 over bg - full|: how well the layers recompose the full video."""
        premultiplied = [premultiply(f, a) for f, a in zip(self.foregrounds, self.alphas)]
        return float(consistency_error(self.full, self.background, premultiplied, self.alphas))


def check_video_size(frames: int, height: int, width: int) -> None:
    """Frames 4k+1 and sizes multiples of 16, or one message that names the nearest valid values."""
    problems = []
    if not isinstance(frames, int) or frames < 1 or (frames - 1) % TEMPORAL_STRIDE:
        lower = max(1, (max(int(frames), 1) - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1)
        problems.append(f"frames must be 4k+1 (the VAE packs 4 frames per latent frame after the first), got "
                        f"{frames}; nearest valid: {lower} or {lower + TEMPORAL_STRIDE}")
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or size < DIT_MULTIPLE or size % DIT_MULTIPLE:
            lower = max(DIT_MULTIPLE, int(size) // DIT_MULTIPLE * DIT_MULTIPLE)
            problems.append(f"{name} must be a multiple of {DIT_MULTIPLE} (VAE stride 8 x DiT patch 2), got {size}; "
                            f"nearest valid: {lower} or {lower + DIT_MULTIPLE}")
    if problems:
        raise ValueError("; ".join(problems))


def check_compatible(dit, vae, text_encoder, dit_name: str = "the DiT", vae_name: str = "the VAE",
                     text_encoder_name: str = "the text encoder") -> None:
    """The DiT takes the VAE's latent channels and the text encoder's width; one message names both parts."""
    from .weights import CheckpointError

    if dit.config.in_dim != vae.z_dim:
        raise CheckpointError(f"{dit_name} takes {dit.config.in_dim} latent channels but {vae_name} makes "
                              f"{vae.z_dim}; pick the VAE the DiT was trained with (Wan2.1's, 16 channels)")
    if dit.config.text_dim != text_encoder.dim:
        raise CheckpointError(f"{dit_name} has text width {dit.config.text_dim} but {text_encoder_name} gives "
                              f"{text_encoder.dim}-wide embeddings; pick the text encoder the DiT was trained with "
                              f"(Wan2.1: umt5-xxl, 4096)")


class LayerT2VPipeline:
    """DiT + RGB VAE + alpha VAE + text encoder. `offload` keeps idle components on `offload_device`."""

    def __init__(self, dit, vae, mask_vae, text_encoder, device: str | torch.device = "cpu", *,
                 offload: bool = True, offload_device: str | torch.device = "cpu", vae_tile=None,
                 names: tuple[str, str, str] = ("the DiT", "the VAE", "the text encoder")):
        missing = [name for name, part in (("DiT", dit), ("VAE", vae), ("alpha VAE", mask_vae),
                                           ("text encoder", text_encoder)) if part is None]
        if missing:
            raise ValueError(f"the pipeline needs a DiT, an RGB VAE, an alpha VAE and a text encoder; missing: "
                             f"{', '.join(missing)}")
        check_compatible(dit, vae, text_encoder, *names)  # names: the files, in the messages
        self.dit, self.vae, self.mask_vae, self.text_encoder = dit, vae, mask_vae, text_encoder
        self.device = torch.device(device)
        self.offload = offload
        self.offload_device = torch.device(offload_device)
        self.vae_tile = vae_tile

    @contextlib.contextmanager
    def _on_device(self, *parts):
        for part in parts:
            part.to(self.device)
        try:
            yield
        finally:
            if self.offload and self.offload_device != self.device:
                for part in parts:
                    part.to(self.offload_device)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def latent_shape(self, spec: LayerSpec, frames: int, height: int, width: int) -> tuple[int, ...]:
        latent_frames = (frames - 1) // TEMPORAL_STRIDE + 1
        return (1, self.dit.config.in_dim, spec.num_segments * latent_frames,
                height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)

    def _check_keep(self, spec: LayerSpec, keep: Mapping[str, torch.Tensor], frames: int, height: int,
                    width: int) -> None:
        check_keep(spec, keep, frames, height, width)

    def encode_layer(self, spec: LayerSpec, name: str, keep: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The latent segment [1, C, T', H', W'] of one given layer (videos in [0, 1], fg straight)."""
        return encode_videos(self.vae, self.mask_vae, spec, keep, self.device, self.vae_tile, names=(name,))[name]

    @torch.no_grad()
    def __call__(self, prompt: str, background: str = "", foregrounds: Sequence[str] = ("",), negative: str = "", *,
                 frames: int = 41, height: int = 384, width: int = 672, steps: int = 50, guidance: float = 5.0,
                 shift: float = 5.0, solver: str = "unipc", seed: int = 0, policy: str | None = None,
                 keep: Mapping[str, torch.Tensor] | None = None, strength: float = 0.0,
                 callback: Callable | None = None) -> LayeredVideo:
        # Everything that can be wrong with the request is checked before any model runs.
        foregrounds = list(foregrounds)
        spec = LayerSpec(len(foregrounds), policy or self.dit.config.routing_policy)
        self.dit.layer_spec(spec.num_foregrounds)  # raises if the checkpoint has too few layer categories
        check_video_size(frames, height, width)
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
        sigmas = flow_sigmas(steps, shift)
        keep = dict(keep or {})
        if keep:
            self._check_keep(spec, keep, frames, height, width)
        shape = self.latent_shape(spec, frames, height, width)
        noise = seeded_noise(shape, seed, device=self.device)

        with self._on_device(self.text_encoder):
            text = encode_layer_prompts(self.text_encoder, spec, prompt, background, foregrounds, negative)
        known = None
        if keep:
            with self._on_device(self.vae, self.mask_vae):
                segments = {name: self.encode_layer(spec, name, keep) for name in keep if name in spec.segments}
            known = known_latent(spec, segments, shape)

        cond = {"context": text.context.to(self.device), "prompt_lens": text.prompt_lens}
        uncond = {"context": text.negative_context.to(self.device), "prompt_lens": text.negative_prompt_lens}

        with self._on_device(self.dit):
            velocity = cfg_velocity(dit_model_fn(self.dit, spec), cond, uncond, guidance)
            latent = sample(velocity, noise, sigmas, solver, callback=callback, known=known, strength=strength)

        check_finite_latent(spec, latent, "the sampler's output")

        with self._on_device(self.vae, self.mask_vae):
            layers = self.decode(spec, latent)
        settings = dict(frames=frames, height=height, width=width, steps=steps, guidance=guidance, shift=shift,
                        solver=solver, seed=seed, policy=spec.policy, strength=strength, kept=sorted(keep),
                        rope=self.dit.config.rope, mask_mode=getattr(self.mask_vae, "mask_mode", None),
                        prompts=dict(zip(spec.prompts, text.prompts[0])), negative=text.negative_prompts[0])
        return LayeredVideo(latent=latent[0].cpu(), spec=spec, settings=settings, **layers)

    def decode(self, spec: LayerSpec, latent: torch.Tensor) -> dict:
        """Decode a serialized latent [1, C, S*T', H', W'] into full, background, straight foregrounds, alphas."""
        return decode_videos(self.vae, self.mask_vae, spec, latent, self.device, self.vae_tile)

