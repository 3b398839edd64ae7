"""Synthetic layered videos with exact ground truth: crisp coloured shapes moving over moving textures.

One sample holds a textured, drifting background (BACKGROUNDS), 1-3 foregrounds (a shape from SHAPES in a colour
from PALETTE, distinct colours within a sample, kept apart so their alphas stay separable) moving along smooth paths,
their straight colours and anti-aliased alphas, and the full video composited exactly as
full = fg_N over ... over fg_1 over background (foreground 1 at the bottom) by `layert2v_core.composite`.
Captions use only the words of `caption_vocabulary()`:

    full        "a red circle moves left and a cyan star moves up over a blue striped background"
    foreground  "a red circle"
    background  "a blue striped background"

Held-out split: a (colour, shape, background) combination is reserved for evaluation when `is_held_out` says so
(one shape per colour and background, a fifth of all combinations). "train" samples contain no reserved
combination, "eval" samples only reserved ones, so no evaluation full prompt ever occurs in training.

On disk (train/vidlayer_layout.py documents the layout): VidLayer sample folders, by default lossy H.264 mp4 files
(what the official reader reads); `--lossless` writes PNG-frame folders, exact to 8 bits. Several foregrounds add
`mask_2`, `mask_3` and the lists `captions.foregrounds` and `paths.mask_videos`; N = 1 folders are plain VidLayer.

    python train/synthetic.py --out DIR --samples N --seed S --frames 17 --height 64 --width 64 \
        --max-foregrounds 3 [--lossless] [--split train|eval] [--jsonl] [--static-camera]
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as `python train/synthetic.py`: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from layert2v_core.atomic import write_json
from layert2v_core.composite import premultiply, recompose
from layert2v_core.layers import MAX_FOREGROUNDS
from train.vidlayer_layout import METADATA, caption_metadata, write_jsonl, write_sample_folder

# ---------------------------------------------------------------- the named palette, shapes and backgrounds

# Foreground colours, straight RGB in [0, 1]; every background stays at least BACKGROUND_CLEARANCE away from them.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.10, 0.10),
    "yellow": (0.96, 0.90, 0.10),
    "cyan": (0.10, 0.88, 0.92),
    "magenta": (0.88, 0.12, 0.84),
    "white": (0.97, 0.97, 0.97),
}
# Foreground shading darkens the palette colour by at most this fraction (a light from the top left).
SHADING = 0.12
SHAPES = ("circle", "square", "triangle", "star", "diamond")
MOTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                           "down": (0.0, 1.0)}


@dataclass(frozen=True)
class BackgroundStyle:
    """A textured background: a pattern in [0, 1] mixing two colours (straight RGB)."""

    name: str
    pattern: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]


BACKGROUNDS: dict[str, BackgroundStyle] = {style.name: style for style in (
    BackgroundStyle("blue striped", "stripes", (0.08, 0.16, 0.45), (0.22, 0.36, 0.72)),
    BackgroundStyle("green checkered", "checker", (0.08, 0.32, 0.12), (0.24, 0.56, 0.24)),
    BackgroundStyle("orange gradient", "gradient", (0.58, 0.28, 0.04), (0.86, 0.50, 0.12)),
    BackgroundStyle("grey noise", "noise", (0.22, 0.22, 0.22), (0.55, 0.55, 0.55)),
)}
# Least max-channel difference between any background pixel and any (shaded) palette colour.
BACKGROUND_CLEARANCE = 0.2
# Edge width of the alpha ramp in pixels: anti-aliased, so mattes are soft but mostly 0 or 1.
EDGE_PIXELS = 1.0
FILLER_WORDS = ("a", "an", "moves", "and", "over", "background")


def caption_vocabulary() -> tuple[str, ...]:
    """Every word a synthetic caption can use, sorted (for building a tokenizer over them)."""
    words = set(FILLER_WORDS) | set(PALETTE) | set(SHAPES) | set(MOTIONS)
    for name in BACKGROUNDS:
        words |= set(name.split())
    return tuple(sorted(words))


def is_held_out(colour: str, shape: str, background: str) -> bool:
    """Whether a (colour, shape, background) combination is reserved for evaluation.

    For each colour and background exactly one of the five shapes is reserved, so every colour, shape and background
    still occurs in training.
    """
    c, s, b = list(PALETTE).index(colour), SHAPES.index(shape), list(BACKGROUNDS).index(background)
    return (c + 2 * s + 3 * b) % len(SHAPES) == 0


def colour_fraction(video: torch.Tensor, colour: str, tolerance: float = 0.15,
                    weight: torch.Tensor | None = None) -> float:
    """Fraction of pixels of `video` [3, ...] (straight RGB in [0, 1]) within `tolerance` (max channel difference)
    of a palette colour or a shade of it; with `weight` [1, ...] (e.g. an alpha), a weighted fraction.

    For evaluation: high inside a foreground of that colour, near 0 on a background without a leak.
    """
    reference = torch.tensor(PALETTE[colour], dtype=video.dtype).view(3, *([1] * (video.dim() - 1)))
    brightness = (video * reference).sum(0, keepdim=True) / (reference * reference).sum()
    shade = brightness.clamp(1.0 - SHADING, 1.0)
    close = ((video - reference * shade).abs().amax(0, keepdim=True) <= tolerance).float()
    if weight is None:
        return close.mean().item()
    return ((close * weight).sum() / weight.sum().clamp_min(1e-8)).item()


# ---------------------------------------------------------------- one sample


@dataclass(frozen=True)
class ForegroundSpec:
    colour: str
    shape: str
    motion: str

    @property
    def caption(self) -> str:
        return f"{_article(self.colour)} {self.colour} {self.shape}"


@dataclass
class LayeredSample:
    """A generated sample. Videos are channel-first float32 in [0, 1]: full and background [3, T, H, W],
    foregrounds [N, 3, T, H, W] straight (unassociated) RGB, alphas [N, 1, T, H, W]; foreground 1 at the bottom."""

    full: torch.Tensor
    background: torch.Tensor
    foregrounds: torch.Tensor
    alphas: torch.Tensor
    captions: dict[str, Any]
    background_name: str
    layers: list[ForegroundSpec]
    seed: int
    split: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_foregrounds(self) -> int:
        return len(self.layers)

    def foregrounds_premultiplied(self) -> torch.Tensor:
        return premultiply(self.foregrounds, self.alphas)

    def metadata(self) -> dict[str, Any]:
        """What made this sample, for metadata.json (beside the VidLayer keys)."""
        return {"synthetic": {"seed": self.seed, "split": self.split, "background": self.background_name,
                              "foregrounds": [vars(layer) for layer in self.layers]}}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions_for(layers: list[ForegroundSpec], background: str, foreground_motion: bool = False) -> dict[str, Any]:
    """Captions of a sample: full, background and one per foreground (bottom first). A foreground caption says how
    its subject moves with `foreground_motion`, as a layer caption of real footage may ("a red star moves left"): with
    the paper's routing the foreground and alpha tokens read their own caption only."""
    actions = [f"{layer.caption} moves {layer.motion}" for layer in layers]
    background_caption = f"{_article(background)} {background} background"
    return {"full": f"{' and '.join(actions)} over {background_caption}", "background": background_caption,
            "foregrounds": actions if foreground_motion else [layer.caption for layer in layers]}


# Caption styles of a foreground, by name (the demo build's plan names one): with or without its motion.
FOREGROUND_CAPTIONS = {"shape": False, "shape and motion": True}


def rewrite_captions(folder: str | os.PathLike, foreground_motion: bool = False) -> int:
    """Set the captions of every synthetic sample folder under `folder` from its recorded spec (metadata.json
    "synthetic"), each file replaced atomically; the videos stay. Returns the number of samples."""
    count = 0
    for path in sorted(Path(folder).glob(f"*/{METADATA}")):
        metadata = json.loads(path.read_text())
        spec = metadata["synthetic"]
        layers = [ForegroundSpec(**layer) for layer in spec["foregrounds"]]
        captions = captions_for(layers, spec["background"], foreground_motion)
        metadata["captions"] = caption_metadata(captions)
        write_json(path, metadata)
        count += 1
    return count


def _grid(frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates x, y [1, H, W] in pixels and time t [T, 1, 1] in [0, 1]."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                          torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    t = torch.linspace(0.0, 1.0, frames).view(frames, 1, 1) if frames > 1 else torch.zeros(1, 1, 1)
    return x[None], y[None], t


def _periodic_noise(grid: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Smooth value noise: `grid` [g, g] interpolated (smoothstep, wrapping around) at grid coordinates u, v."""
    size = grid.shape[0]
    u0, v0 = torch.floor(u), torch.floor(v)
    fu, fv = u - u0, v - v0
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    i0, j0 = u0.long() % size, v0.long() % size
    i1, j1 = (i0 + 1) % size, (j0 + 1) % size
    top = grid[j0, i0] * (1 - fu) + grid[j0, i1] * fu
    bottom = grid[j1, i0] * (1 - fu) + grid[j1, i1] * fu
    return top * (1 - fv) + bottom * fv


def draw_background(style: BackgroundStyle, frames: int, height: int, width: int, rng: random.Random,
                generator: torch.Generator, static: bool = False) -> torch.Tensor:
    """[3, T, H, W] texture drifting over the clip (held still when `static`); its pattern parameters come from
    `rng`."""
    x, y, t = _grid(frames, height, width)
    unit = float(min(height, width))
    x, y = x / unit, y / unit
    angle = rng.uniform(0, 2 * math.pi)
    drift = rng.uniform(0.15, 0.35)  # distance the texture travels over the clip, in frame sizes
    drift = 0.0 if static else drift  # drawn either way, so a static sample differs from its drifting twin only here
    dx, dy = math.cos(angle) * drift, math.sin(angle) * drift
    u, v = x - dx * t, y - dy * t
    if style.pattern == "stripes":
        period = rng.uniform(0.18, 0.3)
        across = u * math.cos(angle + 0.3) + v * math.sin(angle + 0.3)
        mix = (0.5 + 1.5 * torch.sin(2 * math.pi * across / period)).clamp(0, 1)
    elif style.pattern == "checker":
        cell = rng.uniform(0.12, 0.22)
        mix = (0.5 + 2.0 * torch.sin(math.pi * u / cell) * torch.sin(math.pi * v / cell)).clamp(0, 1)
    elif style.pattern == "gradient":
        along = u * math.cos(angle) + v * math.sin(angle)
        mix = 0.5 + 0.5 * torch.sin(2 * math.pi * along / rng.uniform(1.2, 2.0) + rng.uniform(0, 2 * math.pi))
    else:  # noise
        cells = rng.choice((4, 5, 6))
        grid = torch.rand(cells, cells, generator=generator)
        mix = _periodic_noise(grid, u * cells, v * cells)
    a = torch.tensor(style.colour_a).view(3, 1, 1, 1)
    b = torch.tensor(style.colour_b).view(3, 1, 1, 1)
    return a * (1 - mix[None]) + b * mix[None]


def _polygon_distance(px: torch.Tensor, py: torch.Tensor, vertices: list[tuple[float, float]]) -> torch.Tensor:
    """Signed distance to a closed polygon (negative inside), exact for any simple polygon."""
    vx0, vy0 = vertices[0]
    distance = (px - vx0) ** 2 + (py - vy0) ** 2
    sign = torch.ones_like(px)
    for i in range(len(vertices)):
        (ax, ay), (bx, by) = vertices[i], vertices[i - 1]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        h = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0, 1)
        distance = torch.minimum(distance, (wx - ex * h) ** 2 + (wy - ey * h) ** 2)
        crossing_up = (py >= ay) & (py < by) & (ex * wy > ey * wx)
        crossing_down = (py < ay) & (py >= by) & (ex * wy <= ey * wx)
        sign = torch.where(crossing_up | crossing_down, -sign, sign)
    return sign * distance.sqrt()


def _regular(points: int, radius: float, phase: float = -math.pi / 2, inner: float | None = None):
    """Vertices of a regular polygon (or a star with `inner` radius), unit-sized."""
    count = points * (2 if inner else 1)
    return [((radius if (inner is None or k % 2 == 0) else inner) * math.cos(phase + 2 * math.pi * k / count),
             (radius if (inner is None or k % 2 == 0) else inner) * math.sin(phase + 2 * math.pi * k / count))
            for k in range(count)]


# Unit shapes of similar area; each maps local coordinates (in radii) to a signed distance in radii.
SHAPE_DISTANCE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "circle": lambda px, py: (px * px + py * py).sqrt() - 0.9,
    "square": lambda px, py: _polygon_distance(px, py, _regular(4, 1.13, phase=math.pi / 4)),
    "triangle": lambda px, py: _polygon_distance(px, py, _regular(3, 1.25, phase=-math.pi / 2)),
    "star": lambda px, py: _polygon_distance(px, py, _regular(5, 1.25, inner=0.55)),
    "diamond": lambda px, py: _polygon_distance(px, py, _regular(4, 1.1, phase=0.0)),
}
# Smaller shapes would be mostly anti-aliased edge at small frame sizes.
MIN_RADIUS_PIXELS = 3.5
# Every shape lies within this many radii of its centre (for keeping foregrounds apart).
SHAPE_EXTENT = 1.25


@dataclass(frozen=True)
class _Path:
    start: tuple[float, float]
    travel: tuple[float, float]
    radius: float
    angle: float
    spin: float

    def centre(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre [T, 1, 1] in pixels at clip times t: a straight drift at constant speed along the prompted direction
        (a sideways wobble made the centroid's steps uneven, which is what the trajectory metric penalises)."""
        return self.start[0] + self.travel[0] * t, self.start[1] + self.travel[1] * t


# How far a foreground travels over the clip, in frame sizes (drawn uniformly). A longer travel ties the side it
# starts on to its direction, so the prompted direction decides much of what the clip shows.
TRAVEL = (0.2, 0.4)


def _plan_path(motion: str, radius: float, height: int, width: int, rng: random.Random,
               travel_range: Sequence[float] = TRAVEL) -> _Path:
    direction = MOTIONS[motion]
    margin = radius * SHAPE_EXTENT  # the whole shape stays in frame, so its alpha always shows the shape
    size = min(height, width)
    most = max(0.0, size - 2 * margin) / size
    travel_length = rng.uniform(min(travel_range[0], most), min(travel_range[1], most)) * size
    travel = (direction[0] * travel_length, direction[1] * travel_length)
    low_x, high_x = margin - min(travel[0], 0), width - margin - max(travel[0], 0)
    low_y, high_y = margin - min(travel[1], 0), height - margin - max(travel[1], 0)
    start = (rng.uniform(low_x, max(low_x, high_x)), rng.uniform(low_y, max(low_y, high_y)))
    # small turns only, so a square never looks like a diamond and a triangle keeps pointing up
    return _Path(start, travel, radius, rng.uniform(-0.15, 0.15),
                 rng.uniform(-0.15, 0.15))


def _least_gap(paths: list[_Path], t: torch.Tensor) -> float:
    """Smallest distance in pixels between the extents of any two paths' shapes over the clip (inf for one)."""
    gap = math.inf
    for i in range(len(paths)):
        for j in range(i):
            (xi, yi), (xj, yj) = paths[i].centre(t), paths[j].centre(t)
            apart = ((xi - xj) ** 2 + (yi - yj) ** 2).sqrt().min().item()
            gap = min(gap, apart - SHAPE_EXTENT * (paths[i].radius + paths[j].radius))
    return gap


def _foreground(spec: ForegroundSpec, path: _Path, frames: int, height: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight colour [3, T, H, W] (shaded palette colour, defined everywhere) and alpha [1, T, H, W]."""
    x, y, t = _grid(frames, height, width)
    cx, cy = path.centre(t)
    angle = path.angle + path.spin * t
    cos, sin = torch.cos(angle), torch.sin(angle)
    local_x = ((x - cx) * cos + (y - cy) * sin) / path.radius
    local_y = (-(x - cx) * sin + (y - cy) * cos) / path.radius
    distance_pixels = SHAPE_DISTANCE[spec.shape](local_x, local_y) * path.radius
    ramp = (0.5 - distance_pixels / EDGE_PIXELS).clamp(0, 1)
    alpha = ramp * ramp * (3 - 2 * ramp)
    # light from the top left, in the shape's unrotated frame so the shading does not spin
    light = (((x - cx) + (y - cy)) / (2.0 * path.radius)).clamp(-1, 1)
    shade = 1.0 - SHADING * (0.5 + 0.5 * light)
    colour = torch.tensor(PALETTE[spec.colour]).view(3, 1, 1, 1)
    return (colour * shade[None]).clamp(0, 1), alpha[None]


def _choose_layers(count: int, background: str, split: str, rng: random.Random) -> list[ForegroundSpec]:
    colours = rng.sample(list(PALETTE), count)
    layers = []
    for colour in colours:
        shapes = [s for s in SHAPES if is_held_out(colour, s, background) == (split == "eval")]
        layers.append(ForegroundSpec(colour, rng.choice(shapes), rng.choice(list(MOTIONS))))
    return layers


def generate_sample(seed: int, frames: int = 17, height: int = 64, width: int = 64, max_foregrounds: int = 3,
                    split: str = "train", num_foregrounds: int | None = None,
                    static_camera: bool = False, foreground_motion: bool = False,
                    travel: Sequence[float] = TRAVEL) -> LayeredSample:
    """One layered sample, a pure function of its arguments.

    num_foregrounds: 1..3, or None to draw it uniformly from 1..max_foregrounds. split: "train" (no held-out
    combination) or "eval" (only held-out combinations). static_camera: the background texture stands still (a
    locked-off camera) instead of drifting. travel: the range of a foreground's travel over the clip, in frame sizes.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if not 1 <= max_foregrounds <= MAX_FOREGROUNDS:
        raise ValueError(f"max_foregrounds must be 1..{MAX_FOREGROUNDS}, got {max_foregrounds}")
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need at least 1 frame of 8x8 pixels, got {frames} frames of {width}x{height}")
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    count = num_foregrounds if num_foregrounds is not None else rng.randint(1, max_foregrounds)
    if not 1 <= count <= MAX_FOREGROUNDS:
        raise ValueError(f"num_foregrounds must be 1..{MAX_FOREGROUNDS}, got {count}")
    background_name = rng.choice(list(BACKGROUNDS))
    layers = _choose_layers(count, background_name, split, rng)
    background = draw_background(BACKGROUNDS[background_name], frames, height, width, rng, generator, static_camera)

    # Draw paths until the shapes stay apart over the whole clip; keep the best try if none does.
    size = min(height, width)
    radius_range = (0.12, 0.17) if count == 1 else (0.09, 0.13)  # corners need pixels: a star's points are 3 px
    _, _, t = _grid(frames, height, width)
    best_paths, best_gap = None, -math.inf
    for _ in range(100):
        radius = max(rng.uniform(*radius_range) * size, MIN_RADIUS_PIXELS)
        paths = [_plan_path(layer.motion, radius * rng.uniform(0.9, 1.1), height, width, rng, travel)
                 for layer in layers]
        gap = _least_gap(paths, t)
        if gap > best_gap:
            best_paths, best_gap = paths, gap
        if gap >= 2.0:
            break
    colours, alphas = zip(*(_foreground(layer, path, frames, height, width)
                            for layer, path in zip(layers, best_paths)))
    foregrounds, alphas = torch.stack(colours), torch.stack(alphas)
    full = recompose(background, list(premultiply(foregrounds, alphas)), list(alphas))
    return LayeredSample(full=full, background=background, foregrounds=foregrounds, alphas=alphas,
                         captions=captions_for(layers, background_name, foreground_motion),
                         background_name=background_name,
                         layers=layers, seed=seed, split=split, info={"least_gap_pixels": best_gap})


def sample_seed(seed: int, index: int) -> int:
    """Seed of the index-th sample of a run seeded `seed` (distinct per index, stable across runs)."""
    return (seed * 1_000_003 + index) % (2 ** 63)


def write_sample(sample: LayeredSample, folder: str | os.PathLike, lossless: bool = False,
                 fps: float = 16.0) -> Path:
    """Write a sample as a VidLayer sample folder (mp4 by default, PNG folders when lossless)."""
    return write_sample_folder(folder, sample.full, sample.background, sample.alphas, sample.captions,
                               lossless=lossless, fps=fps, extra=sample.metadata())


def write_dataset(out: str | os.PathLike, samples: int, seed: int = 0, frames: int = 17, height: int = 64,
                  width: int = 64, max_foregrounds: int = 3, split: str = "train", lossless: bool = False,
                  jsonl: bool = False, fps: float = 16.0, static_camera: bool = False,
                  travel: Sequence[float] = TRAVEL) -> list[Path]:
    """Generate and write `samples` sample folders out/sample_00000 ...; with jsonl, also out/samples.jsonl."""
    out = Path(out)
    folders = []
    for index in range(samples):
        sample = generate_sample(sample_seed(seed, index), frames, height, width, max_foregrounds, split,
                                 static_camera=static_camera, travel=travel)
        folders.append(write_sample(sample, out / f"sample_{index:05d}", lossless=lossless, fps=fps))
    if jsonl:
        write_jsonl(out / "samples.jsonl", folders)
    return folders


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Write synthetic layered videos in the VidLayer layout.")
    parser.add_argument("--out", required=True, help="folder to write sample folders into")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--max-foregrounds", type=int, default=3)
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--lossless", action="store_true", help="PNG frame folders instead of mp4 (exact to 8 bits)")
    parser.add_argument("--jsonl", action="store_true", help="also write samples.jsonl indexing the samples")
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--static-camera", action="store_true", help="backgrounds stand still instead of drifting")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    started = time.perf_counter()
    folders = write_dataset(args.out, args.samples, args.seed, args.frames, args.height, args.width,
                            args.max_foregrounds, args.split, args.lossless, args.jsonl, args.fps,
                            args.static_camera)
    print(f"wrote {len(folders)} {args.split} sample(s) to {args.out} "
          f"({'PNG' if args.lossless else 'mp4'}, {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
