"""Layer videos <-> serialized latent segments: the RGB VAE for full, background and (premultiplied) foregrounds,
the alpha VAE for mattes. Shared by the pipeline and the ComfyUI nodes.

Videos are channel-first [C, T, H, W] in [0, 1]; foregrounds are straight colour on the way in and out (the
latent holds them premultiplied, as LayerT2V generates them); alphas are 1 = opaque.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .composite import premultiply, unpremultiply
from .conditioning import check_kept_layers
from .layers import LayerSpec


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
        if spec.kind(name) == "fg" and f"mask{spec.foreground_number(name)}" not in keep:
            raise ValueError(f"keeping {name!r} needs its alpha too: add 'mask{spec.foreground_number(name)}' "
                             f"(the foreground is premultiplied by it before encoding)")


def encode_layer(vae, mask_vae, spec: LayerSpec, name: str, keep: Mapping[str, torch.Tensor],
                 device: torch.device | str = "cpu", tile=None) -> torch.Tensor:
    """The latent segment [1, C, T', H', W'] of one given layer."""
    video = keep[name].unsqueeze(0).to(device, torch.float32)
    kind = spec.kind(name)
    if kind == "mask":
        return mask_vae.encode(video, tile=tile)
    if kind == "fg":
        alpha = keep[f"mask{spec.foreground_number(name)}"].unsqueeze(0).to(device, torch.float32)
        video = premultiply(video, alpha)
    return vae.encode(video * 2 - 1, tile=tile)


def encode_layers(vae, mask_vae, spec: LayerSpec, keep: Mapping[str, torch.Tensor],
                  device: torch.device | str = "cpu", tile=None) -> dict[str, torch.Tensor]:
    """Latent segments of every given layer, by name."""
    return {name: encode_layer(vae, mask_vae, spec, name, keep, device, tile) for name in keep}


def decode_layers(vae, mask_vae, spec: LayerSpec, latent: torch.Tensor, device: torch.device | str = "cpu",
                  tile=None) -> dict:
    """Serialized latent [1, C, S*T', H', W'] -> full, background, straight foregrounds, alphas (CPU, float32)."""
    parts = spec.split(latent.to(device))
    rgb = {name: ((vae.decode(z, tile=tile)[0] + 1) / 2).clamp(0, 1).float().cpu()
           for name, z in parts.items() if spec.kind(name) != "mask"}
    alphas = [mask_vae.decode(parts[f"mask{i}"], tile=tile)[0].clamp(0, 1).float().cpu()
              for i in range(1, spec.num_foregrounds + 1)]
    foregrounds = [unpremultiply(rgb[f"fg{i}"], alphas[i - 1]) for i in range(1, spec.num_foregrounds + 1)]
    return dict(full=rgb["full"], background=rgb["bg"], foregrounds=foregrounds, alphas=alphas)
