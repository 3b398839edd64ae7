"""Layered samples <-> the serialized latent of a LayerSpec.

Inputs to `encode_layers` are named by the spec's segments: 'full' and 'bg' RGB videos [B, 3, T, H, W] in [-1, 1];
for each foreground i, 'mask{i}' its alpha [B, 1, T, H, W] in [0, 1] and optionally 'fg{i}' its *straight* (not
premultiplied) colour in [-1, 1]; without 'fg{i}' the colour is the full video's, as in the paper (fg = full * alpha).
The foreground is premultiplied here, in [0, 1] light (transparent pixels become black, -1), then encoded.

`decode_layers` returns the same names: full, bg and fg{i} in [-1, 1], the fg{i} *premultiplied* as generated,
and mask{i} alpha in [0, 1]; `unpremultiply` recovers straight colour where alpha is not ~0.

`encode_videos` / `decode_videos` are the same for one sample in the pipeline's and the nodes' terms: videos
[C, T, H, W] in [0, 1], foregrounds straight colour, alphas 1 = opaque.
"""
from __future__ import annotations

from typing import Mapping

import torch

from . import composite
from .conditioning import check_kept_layers
from .layers import LayerSpec
from .mask_vae import MaskVAE
from .vae import WanVAE
from .vae_tiling import Tiling


def premultiply(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight colour in [-1, 1] times alpha in [0, 1], done in [0, 1] light; result in [-1, 1]."""
    return composite.premultiply((rgb + 1) / 2, alpha) * 2 - 1


def unpremultiply(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Inverse of `premultiply` where alpha is not ~0; fully transparent pixels stay black (-1)."""
    return composite.unpremultiply((rgb + 1) / 2, alpha) * 2 - 1


def _check_layers(spec: LayerSpec, layers: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    needed = [n for n in spec.segments if spec.kind(n) != "fg"]
    missing = [n for n in needed if n not in layers]
    allowed = set(spec.segments)
    unknown = [n for n in layers if n not in allowed]
    if missing or unknown:
        raise ValueError(f"a {spec.num_foregrounds}-foreground sample needs {needed} (and optionally "
                         f"{[n for n in spec.segments if spec.kind(n) == 'fg']} as straight colour); "
                         f"missing {missing}, unknown {unknown}")
    frames_hw = tuple(layers["full"].shape[2:])
    for name, video in layers.items():
        channels = 1 if spec.kind(name) == "mask" else 3
        if video.dim() != 5 or video.shape[1] != channels or tuple(video.shape[2:]) != frames_hw:
            raise ValueError(f"layer {name!r} must be [batch, {channels}, {', '.join(map(str, frames_hw))}] like "
                             f"'full', got {tuple(video.shape)}")
    return frames_hw


def encode_layers(vae: WanVAE, mask_vae: MaskVAE, spec: LayerSpec, layers: Mapping[str, torch.Tensor], *,
                  tile: Tiling | tuple[int, int] | None = None) -> torch.Tensor:
    """Encode each layer (RGB VAE for full / bg / fg, mask VAE for alphas) and serialize along latent time."""
    _check_layers(spec, layers)
    return spec.join({name: encode_layer(vae, mask_vae, spec, name, layers, tile=tile) for name in spec.segments},
                     dim=2)


def encode_layer(vae: WanVAE, mask_vae: MaskVAE, spec: LayerSpec, name: str, layers: Mapping[str, torch.Tensor], *,
                 tile: Tiling | tuple[int, int] | None = None) -> torch.Tensor:
    """The latent segment of one layer, from `layers` as described above (fg{i} needs mask{i}, or full)."""
    kind = spec.kind(name)
    if kind == "mask":
        return mask_vae.encode(layers[name], tile=tile)
    if kind == "fg":
        alpha = layers[f"mask{spec.foreground_number(name)}"]
        return vae.encode(premultiply(layers.get(name, layers.get("full")), alpha), tile=tile)
    return vae.encode(layers[name], tile=tile)


def decode_layers(vae: WanVAE, mask_vae: MaskVAE, spec: LayerSpec, latent: torch.Tensor, *,
                  tile: Tiling | tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Split a serialized latent [B, C, S*T', H', W'] and decode every segment; fg{i} stay premultiplied."""
    if latent.dim() != 5:
        raise ValueError(f"a serialized latent is [batch, channels, frames, height, width], got {tuple(latent.shape)}")
    out = {}
    for name, part in spec.split(latent, dim=2).items():
        decoder = mask_vae if spec.kind(name) == "mask" else vae
        out[name] = decoder.decode(part, tile=tile)
    return out


# Kept videos a little outside [0, 1] (resampling overshoot) are fine; further out is a unit mistake.
KEEP_RANGE_SLACK = 0.05


def check_finite_latent(spec: LayerSpec, latent: torch.Tensor, what: str = "the latent") -> None:
    """Every segment of a serialized latent finite; one NaN would turn its whole decoded layer into NaN."""
    bad = [name for name, part in spec.split(latent, dim=2).items() if not torch.isfinite(part).all()]
    if bad:
        raise ValueError(f"{what} holds NaN/inf values in segment(s) {', '.join(bad)}, so those layers cannot be "
                         f"decoded: the sampling diverged. Try a lower cfg, another solver or more steps, and fp32 or "
                         f"bf16 weights instead of fp16")


def check_keep(spec: LayerSpec, keep: Mapping[str, torch.Tensor], frames: int, height: int, width: int) -> None:
    """Layer names valid for `spec`, each video [C, frames, height, width], and every kept fg with its matte."""
    check_kept_layers(spec, keep)
    for name, video in keep.items():
        channels = 1 if spec.kind(name) == "mask" else 3
        expected = (channels, frames, height, width)
        if not isinstance(video, torch.Tensor) or tuple(video.shape) != expected:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"kept layer {name!r} must be a [C, T, H, W] tensor in [0, 1] of shape {expected}, "
                             f"got {got}")
        nonfinite = int((~torch.isfinite(video)).sum())
        if nonfinite:
            kinds = "/".join(k for k, hit in (("NaN", video.isnan().any()), ("inf", video.isinf().any())) if hit)
            raise ValueError(f"kept layer {name!r} has {nonfinite} {kinds} value(s); give finite values in [0, 1]")
        low, high = float(video.min()), float(video.max())
        if low < -KEEP_RANGE_SLACK or high > 1 + KEEP_RANGE_SLACK:
            hint = " (it looks like 0..255: divide by 255)" if high > 2 else ""
            raise ValueError(f"kept layer {name!r} spans [{low:.3g}, {high:.3g}]; layers are in [0, 1]{hint}")
        if spec.kind(name) == "fg" and f"mask{spec.foreground_number(name)}" not in keep:
            raise ValueError(f"keeping {name!r} needs its alpha too: add 'mask{spec.foreground_number(name)}' "
                             f"(the foreground is premultiplied by it before encoding)")


def encode_videos(vae: WanVAE, mask_vae: MaskVAE, spec: LayerSpec, keep: Mapping[str, torch.Tensor],
                  device: torch.device | str = "cpu", tile: Tiling | tuple[int, int] | None = None,
                  names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Latent segments [1, C, T', H', W'] of given layer videos (all of `keep`, or `names`), by name."""
    batch = {n: v.unsqueeze(0).to(device, torch.float32) for n, v in keep.items()}
    batch = {n: (v if spec.kind(n) == "mask" else v * 2 - 1) for n, v in batch.items()}  # RGB in [-1, 1]
    return {name: encode_layer(vae, mask_vae, spec, name, batch, tile=tile) for name in (names or tuple(keep))}


def decode_videos(vae: WanVAE, mask_vae: MaskVAE, spec: LayerSpec, latent: torch.Tensor,
                  device: torch.device | str = "cpu", tile: Tiling | tuple[int, int] | None = None) -> dict:
    """Serialized latent [1, C, S*T', H', W'] -> full, background, straight foregrounds, alphas (CPU, float32)."""
    check_finite_latent(spec, latent)
    decoded = decode_layers(vae, mask_vae, spec, latent.to(device), tile=tile)
    layers = {name: (v[0] if spec.kind(name) == "mask" else (v[0] + 1) / 2).clamp(0, 1).float().cpu()
              for name, v in decoded.items()}
    numbers = range(1, spec.num_foregrounds + 1)
    return dict(full=layers["full"], background=layers["bg"], alphas=[layers[f"mask{i}"] for i in numbers],
                foregrounds=[composite.unpremultiply(layers[f"fg{i}"], layers[f"mask{i}"]) for i in numbers])
