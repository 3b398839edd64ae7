"""Spatial tiling for the VAE: run a frame-size-bound function on overlapping tiles and blend the seams.

Tiles are laid on the latent grid (one cell = 8x8 pixels) so encode and decode cut the same places. Inside an
overlap the two tiles are mixed with linear ramps, so the seam fades over `overlap` pixels instead of jumping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

GRID = 8  # pixels per latent cell


@dataclass(frozen=True)
class Tiling:
    """Square tiles of `size` pixels overlapping by `overlap` pixels; both multiples of 8."""

    size: int = 256
    overlap: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 2 * GRID or self.size % GRID:
            raise ValueError(f"tile size must be a multiple of {GRID} pixels and at least {2 * GRID}, got "
                             f"{self.size!r} (e.g. 256)")
        if not isinstance(self.overlap, int) or self.overlap < 0 or self.overlap % GRID or self.overlap >= self.size:
            raise ValueError(f"tile overlap must be a multiple of {GRID} pixels, from 0 to below the tile size "
                             f"{self.size}, got {self.overlap!r} (e.g. {max(GRID, self.size // 4 // GRID * GRID)})")


def as_tiling(tile) -> Tiling | None:
    if tile is None or isinstance(tile, Tiling):
        return tile
    if isinstance(tile, (tuple, list)) and len(tile) == 2:
        return Tiling(*tile)
    raise ValueError(f"tile must be None, a Tiling or a (size, overlap) pair in pixels, got {tile!r}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start cells of tiles covering `length` cells every `tile - overlap` cells; the last one is cut at the edge
    (a smaller tile costs less than one pushed back over work already done)."""
    if length <= tile:
        return [0]
    return list(range(0, length - overlap, tile - overlap))


def _ramp(size: int, fade: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    weight = torch.ones(size)
    fade = min(fade, size)
    if fade > 0:
        rise = (torch.arange(fade, dtype=torch.float32) + 0.5) / fade  # never 0, so every pixel keeps some weight
        if fade_in:
            weight[:fade] = torch.minimum(weight[:fade], rise)
        if fade_out:
            weight[-fade:] = torch.minimum(weight[-fade:], rise.flip(0))
    return weight


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tiling: Tiling,
              factor_in: int, factor_out: int) -> torch.Tensor:
    """Apply `fn` tile by tile over the last two dims of x and blend. One latent cell is `factor_in` pixels of
    the input and `factor_out` pixels of fn's output (decode: 1 -> 8, encode: 8 -> 1)."""
    cells_h, cells_w = x.shape[-2] // factor_in, x.shape[-1] // factor_in
    tile, fade = tiling.size // GRID, tiling.overlap // GRID
    out = weight = None
    for top in tile_starts(cells_h, tile, fade):
        for left in tile_starts(cells_w, tile, fade):
            th, tw = min(tile, cells_h - top), min(tile, cells_w - left)
            part = fn(x[..., top * factor_in:(top + th) * factor_in, left * factor_in:(left + tw) * factor_in])
            if out is None:
                out = torch.zeros(*part.shape[:-2], cells_h * factor_out, cells_w * factor_out,
                                  dtype=part.dtype, device=part.device)
                weight = torch.zeros(cells_h * factor_out, cells_w * factor_out, dtype=part.dtype, device=part.device)
            w = (_ramp(th * factor_out, fade * factor_out, top > 0, top + th < cells_h)[:, None]
                 * _ramp(tw * factor_out, fade * factor_out, left > 0, left + tw < cells_w)[None, :])
            w = w.to(device=part.device, dtype=part.dtype)
            rows = slice(top * factor_out, (top + th) * factor_out)
            cols = slice(left * factor_out, (left + tw) * factor_out)
            out[..., rows, cols].addcmul_(part, w)
            weight[rows, cols] += w
            del part
    return out.div_(weight)
