"""Metrics that know the synthetic world of the demo model (train/synthetic.py): colours, shapes, backgrounds.

They apply to a foreground whose caption is "a <colour> <shape>" in that world's vocabulary and say whether the
layers show what the prompt names: the dominant palette colour under the alpha, the shape the alpha has (nearest
template), one connected region per frame, a background free of the foreground's colour; and for a background
captioned with one of that world's names, whether its texture and its colours are the prompted ones.

The two classifiers are written for this world alone and are checked on its ground truth (tests/test_evaluation.py):
- shape: each frame's opaque region against the five shapes drawn at its centroid, scaled to its area, at three small
  turns; the best IoU votes, the majority of frames decides. A soft round blob reads as a circle.
- texture: the background's grey-level spectrum (energy per frequency band and per orientation, orientations sorted
  so a stripe at any angle looks alike) against reference backgrounds drawn by the world, nearest neighbours vote.
  Colour is left out, so a blotchy "blue striped" background reads as noise whatever its hue.
"""
from __future__ import annotations

import functools
import math
import random
import statistics

import torch

from .layer_metrics import pixel_centres, region_labels


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


def parse_background(caption: str) -> str | None:
    """The world's background name in a caption ("a blue striped background" -> "blue striped"), else None."""
    text = " ".join(caption.lower().split())
    names = [name for name in _world().BACKGROUNDS if name in text]
    return names[0] if len(names) == 1 else None


SHAPE_TURNS = (-0.2, 0.0, 0.2)  # radians; the world turns shapes by at most 0.3 over a clip


@functools.lru_cache(maxsize=None)
def _unit_areas() -> dict[str, float]:
    """Area of each unit shape, in radii squared (measured on a fine grid)."""
    world = _world()
    y, x = torch.meshgrid(torch.linspace(-1.5, 1.5, 601), torch.linspace(-1.5, 1.5, 601), indexing="ij")
    cell = (3.0 / 600) ** 2
    return {shape: float((distance(x, y) < 0).sum()) * cell for shape, distance in world.SHAPE_DISTANCE.items()}


def classify_shape_frame(mask: torch.Tensor) -> tuple[str, float] | None:
    """(shape, IoU) of the template that best fits one bool opaque mask [H, W]; None when it is empty."""
    area = int(mask.sum())
    if area < 4:
        return None
    world = _world()
    xs, ys = pixel_centres(*mask.shape)
    cx, cy = float(xs[mask].mean()), float(ys[mask].mean())
    best = None
    for shape, unit_area in _unit_areas().items():
        radius = math.sqrt(area / unit_area)
        for turn in SHAPE_TURNS:
            cos, sin = math.cos(turn), math.sin(turn)
            local_x = ((xs - cx) * cos + (ys - cy) * sin) / radius
            local_y = (-(xs - cx) * sin + (ys - cy) * cos) / radius
            template = world.SHAPE_DISTANCE[shape](local_x, local_y) < 0
            iou = float((template & mask).sum()) / max(1, int((template | mask).sum()))
            if best is None or iou > best[1]:
                best = (shape, iou)
    return best


def classify_shape(alpha: torch.Tensor) -> str | None:
    """The shape an alpha [1, T, H, W] shows: the majority over its non-empty frames of the best template."""
    votes = [fit[0] for fit in (classify_shape_frame(frame[0] > 0.5) for frame in alpha.unbind(1)) if fit]
    return statistics.mode(votes) if votes else None


TEXTURE_BANDS = (0.5, 1.5, 2.5, 4.0, 6.5, 10.0, math.inf)  # cycles per frame side
TEXTURE_ORIENTATIONS = 8
TEXTURE_REFERENCES = 24  # per background style
TEXTURE_NEIGHBOURS = 5


def texture_features(frame: torch.Tensor) -> torch.Tensor:
    """Colour-free texture features of one RGB frame [3, H, W]: the grey level's spectral energy per frequency band
    and, above 1.5 cycles, per orientation (sorted, so the angle of a pattern does not matter), and its contrast."""
    grey = frame.float().mean(0)
    height, width = grey.shape
    contrast = float(grey.std())
    grey = (grey - grey.mean()) / (contrast + 1e-3)
    window = torch.outer(torch.hann_window(height, periodic=False), torch.hann_window(width, periodic=False))
    power = torch.fft.fft2(grey * window).abs().pow(2)
    fy = torch.fft.fftfreq(height)[:, None] * height
    fx = torch.fft.fftfreq(width)[None, :] * width
    radius = (fx ** 2 + fy ** 2).sqrt()
    angle = torch.atan2(fy, fx) % math.pi
    total = float(power[radius >= TEXTURE_BANDS[0]].sum()) + 1e-8
    bands = [float(power[(radius >= lo) & (radius < hi)].sum()) / total
             for lo, hi in zip(TEXTURE_BANDS[:-1], TEXTURE_BANDS[1:])]
    detailed = radius >= 1.5
    bins = (angle[detailed] / math.pi * TEXTURE_ORIENTATIONS).long().clamp(max=TEXTURE_ORIENTATIONS - 1)
    orientations = torch.zeros(TEXTURE_ORIENTATIONS).index_add_(0, bins, power[detailed])
    orientations = (orientations / orientations.sum().clamp_min(1e-8)).sort(descending=True).values
    return torch.tensor([*bands, *orientations.tolist(), min(contrast * 4, 1.0)])


@functools.lru_cache(maxsize=8)
def _texture_references(height: int, width: int) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    """Features of reference backgrounds drawn by the world at this size, their names, and the features' scale."""
    world = _world()
    features, names = [], []
    for index, (name, style) in enumerate(world.BACKGROUNDS.items()):
        for k in range(TEXTURE_REFERENCES):
            rng = random.Random(7919 * (index + 1) + k)
            generator = torch.Generator().manual_seed(7919 * (index + 1) + k)
            frame = world.draw_background(style, 1, height, width, rng, generator)[:, 0]
            features.append(texture_features(frame))
            names.append(name)
    features = torch.stack(features)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-3)
    return (features - mean) / std, names, mean, std


def classify_texture(background: torch.Tensor) -> str | None:
    """The background name whose texture [3, T, H, W] looks most alike: nearest reference backgrounds vote, over
    the first, middle and last frames."""
    _, frames, height, width = background.shape
    references, names, mean, std = _texture_references(height, width)
    votes = []
    for t in sorted({0, frames // 2, frames - 1}):
        query = (texture_features(background[:, t]) - mean) / std
        nearest = (references - query).norm(dim=1).topk(TEXTURE_NEIGHBOURS, largest=False).indices
        votes += [names[i] for i in nearest.tolist()]
    return statistics.mode(votes) if votes else None


def background_colour(background: torch.Tensor) -> str:
    """The background name whose two colours lie closest (on average) to the background's mean colour."""
    world = _world()
    mean = background.float().mean(dim=(1, 2, 3))

    def distance(style) -> float:
        centre = (torch.tensor(style.colour_a) + torch.tensor(style.colour_b)) / 2
        return float((mean - centre).abs().max())
    return min(world.BACKGROUNDS, key=lambda name: distance(world.BACKGROUNDS[name]))


def background_world_metrics(background: torch.Tensor, caption: str) -> dict | None:
    """Whether a background shows the texture and the colours its caption names; None outside the world."""
    name = parse_background(caption)
    if name is None:
        return None
    return {"texture_match": classify_texture(background) == name, "colour_match": background_colour(background) == name}


def dominant_colour(foreground: torch.Tensor, alpha: torch.Tensor) -> str:
    world = _world()
    return max(world.PALETTE, key=lambda c: world.colour_fraction(foreground, c, weight=alpha))


def foreground_world_metrics(background: torch.Tensor, foreground: torch.Tensor, alpha: torch.Tensor,
                             caption: str) -> dict | None:
    parsed = parse_caption(caption)
    if parsed is None:
        return None
    colour, shape = parsed
    regions = [components(frame[0] > 0.5) for frame in alpha.unbind(1)]
    return {"colour_match": dominant_colour(foreground, alpha) == colour, "shape_match": classify_shape(alpha) == shape,
            "one_region": statistics.mode(regions) == 1,
            "background_free_of_colour": _world().colour_fraction(background, colour) < 0.02}
