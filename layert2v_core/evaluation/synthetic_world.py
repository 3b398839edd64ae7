"""Metrics that know the synthetic world of the demo model (train/synthetic.py): colours, shapes, backgrounds.

They apply to a foreground whose caption is "a <colour> <shape>" in that world's vocabulary and say whether the
layers show what the prompt names: the dominant palette colour under the alpha, one connected region per frame, a
background free of the foreground's colour.
"""
from __future__ import annotations

import statistics

import torch

from .layer_metrics import region_labels


def _world():
    from train import synthetic  # the world's one definition, shared with the data it generates
    return synthetic


def parse_caption(caption: str) -> tuple[str, str] | None:
    """(colour, shape) of a synthetic foreground caption, None for anything else."""
    world = _world()
    words = caption.lower().split()
    colours = [w for w in words if w in world.PALETTE]
    shapes = [w for w in words if w in world.SHAPES]
    return (colours[0], shapes[0]) if len(colours) == 1 and len(shapes) == 1 else None


def components(mask: torch.Tensor, min_area: int = 4) -> int:
    """Connected regions (8-neighbour) of a bool image [H, W] with at least `min_area` pixels."""
    labels = region_labels(mask)
    _, counts = labels[mask].unique(return_counts=True)
    return int((counts >= min_area).sum())


def dominant_colour(foreground: torch.Tensor, alpha: torch.Tensor) -> str:
    world = _world()
    return max(world.PALETTE, key=lambda c: world.colour_fraction(foreground, c, weight=alpha))


def foreground_world_metrics(background: torch.Tensor, foreground: torch.Tensor, alpha: torch.Tensor,
                             caption: str) -> dict | None:
    parsed = parse_caption(caption)
    if parsed is None:
        return None
    colour, _ = parsed
    regions = [components(frame[0] > 0.5) for frame in alpha.unbind(1)]
    return {"colour_match": dominant_colour(foreground, alpha) == colour,
            "one_region": statistics.mode(regions) == 1,
            "background_free_of_colour": _world().colour_fraction(background, colour) < 0.02}
