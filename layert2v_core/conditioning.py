"""Layer-conditioned generation: which entries of a serialized latent are kept from given layer videos.

The editing workflows (new foreground on a given background, new background behind a given foreground,
decomposing a given video) all come down to a mask over the serialized latent that marks the kept segments;
`sampling.sample(..., known=(latent, mask))` then holds those segments on their known trajectory. The segment
order comes from LayerSpec only.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .layers import LayerSpec


def check_kept_layers(spec: LayerSpec, keep: Iterable[str]) -> tuple[str, ...]:
    """Validate segment names to keep against the layout; returns them in layout order."""
    keep = tuple(keep)
    if not keep:
        raise ValueError(f"name at least one layer to keep, from {list(spec.segments)}")
    unknown = [name for name in keep if name not in spec.segments]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; a {spec.num_foregrounds}-foreground sample has "
                         f"{list(spec.segments)}")
    if set(keep) == set(spec.segments):
        raise ValueError("every layer is kept, so there is nothing to generate; leave at least one layer out")
    return tuple(name for name in spec.segments if name in keep)


def keep_mask(spec: LayerSpec, keep: Iterable[str], latent_shape: torch.Size | tuple[int, ...],
              dim: int = 2, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool mask shaped like the serialized latent, True on the segments named in `keep` (e.g. ("bg",))."""
    names = check_kept_layers(spec, keep)
    mask = torch.zeros(tuple(latent_shape), dtype=torch.bool, device=device)
    segments = spec.split(mask, dim=dim)  # views into `mask`
    for name in names:
        segments[name].fill_(True)
    return mask


def known_latent(spec: LayerSpec, layers: dict[str, torch.Tensor], latent_shape: torch.Size | tuple[int, ...],
                 dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent, mask) for `sample(known=...)` from encoded layer latents by segment name; other segments are zero."""
    names = check_kept_layers(spec, layers)
    first = layers[names[0]]
    latent = torch.zeros(tuple(latent_shape), dtype=first.dtype, device=first.device)
    segments = spec.split(latent, dim=dim)
    for name in names:
        if layers[name].shape != segments[name].shape:
            raise ValueError(f"layer {name!r} has latent shape {tuple(layers[name].shape)}, expected "
                             f"{tuple(segments[name].shape)} (one segment of {tuple(latent_shape)})")
        segments[name].copy_(layers[name])
    return latent, keep_mask(spec, names, latent_shape, dim=dim, device=first.device)
