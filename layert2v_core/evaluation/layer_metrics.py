"""Layer metrics the paper does not report, chosen to catch what a viewer sees at once in a layered clip.

All take channel-first tensors in [0, 1] (RGB [3, T, H, W], alpha [1, T, H, W]). A pixel is opaque when alpha > 0.5:
what a viewer reads as "the foreground is there".
- presence: the fraction of frames whose opaque area is at least half the clip's median area (and not empty), so a
  foreground that vanishes or fades to a ghost for some frames loses those frames;
- alpha stability: mean IoU of consecutive opaque masks;
- trajectory: the largest frame-to-frame step of the alpha centroid over the median step (floored at half a pixel):
  near 1 for steady motion, large when the foreground stands still and jumps; direction agreement: the centroid's
  travel from first to last present frame lies within 60 degrees of the prompted direction and covers at least 5%
  of the frame;
- alpha sharpness: of the pixels with any alpha (> 0.02), the fraction decisively in or out (< 0.1 or > 0.9);
- consistency error |fg over bg - full| over the whole clip and inside the dilated opaque region, where the global
  mean hides a missing foreground;
- background leak: the fraction of the opaque region where the background shows the foreground's colour (within
  0.15 on every channel);
- presence in the full video: the fraction of frames where, inside the opaque region, the full video is closer to
  the foreground than to the background (a foreground missing from the full video, or elsewhere than its alpha
  says, scores 0);
- separation of several foregrounds: the largest mean per-frame IoU of two foregrounds' opaque masks.
"""
from __future__ import annotations

import re
import statistics

import torch
import torch.nn.functional as F

from ..composite import over_background

OPAQUE = 0.5
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
DIRECTION_WORDS = {"left": "left", "leftward": "left", "leftwards": "left", "right": "right", "rightward": "right",
                   "rightwards": "right", "up": "up", "upward": "up", "upwards": "up", "rises": "up", "down": "down",
                   "downward": "down", "downwards": "down", "falls": "down"}
MIN_TRAVEL = 0.05  # of the frame's shorter side
MAX_ANGLE_COS = 0.5  # 60 degrees
LEAK_TOLERANCE = 0.15
REGION_DILATION = 2  # pixels


def opaque(alpha: torch.Tensor) -> torch.Tensor:
    """Bool [T, H, W]."""
    return alpha[0] > OPAQUE


def presence(alpha: torch.Tensor) -> tuple[float, list[bool]]:
    area = opaque(alpha).flatten(1).sum(1).float()
    reference = float(area.median())
    present = [(a > 0) and a >= 0.5 * reference for a in area.tolist()]
    return sum(present) / len(present), present


def alpha_stability(alpha: torch.Tensor) -> float:
    masks = opaque(alpha).flatten(1)
    ious = []
    for a, b in zip(masks[:-1], masks[1:]):
        union = (a | b).sum().item()
        ious.append(1.0 if union == 0 else (a & b).sum().item() / union)
    return statistics.mean(ious) if ious else 1.0


def pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y [H, W] of every pixel's centre, in pixels."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    return xs, ys


def centroids(alpha: torch.Tensor) -> list[tuple[float, float] | None]:
    """Alpha-weighted centre (x, y) in pixels of each frame's opaque region, None where it is empty."""
    xs, ys = pixel_centres(*alpha.shape[-2:])
    weights = alpha[0].float() * opaque(alpha)
    out = []
    for w in weights:
        total = float(w.sum())
        out.append(None if total <= 0 else (float((w * xs).sum()) / total, float((w * ys).sum()) / total))
    return out


def _steps(points: list[tuple[float, float] | None]) -> list[float]:
    return [((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5 for a, b in zip(points[:-1], points[1:])
            if a is not None and b is not None]


def trajectory_ratio(points: list[tuple[float, float] | None]) -> float | None:
    """Largest step / max(median step, 0.5 px) over consecutive present frames; None with fewer than 2 steps."""
    steps = _steps(points)
    if len(steps) < 2:
        return None
    return max(steps) / max(statistics.median(steps), 0.5)


def prompted_direction(full_prompt: str, foreground_prompt: str = "") -> str | None:
    """The direction word in the foreground's caption or right after it in the full prompt (else the first one in
    the full prompt)."""
    text = full_prompt.lower()
    start = text.find(foreground_prompt.lower()) if foreground_prompt else -1
    if start >= 0:  # the caption and the clause it starts: up to the next "and" / "over"
        clause = re.split(r"\b(?:and|over)\b", text[start + len(foreground_prompt):], maxsplit=1)[0]
        for word in re.findall(r"[a-z]+", foreground_prompt.lower() + " " + clause):
            if word in DIRECTION_WORDS:
                return DIRECTION_WORDS[word]
        return None
    for word in re.findall(r"[a-z]+", text):
        if word in DIRECTION_WORDS:
            return DIRECTION_WORDS[word]
    return None


def travel(points: list[tuple[float, float] | None]) -> tuple[float, float] | None:
    present = [p for p in points if p is not None]
    if len(present) < 2:
        return None
    return present[-1][0] - present[0][0], present[-1][1] - present[0][1]


def direction_agrees(points: list[tuple[float, float] | None], direction: str, frame_side: int) -> bool:
    moved = travel(points)
    if moved is None:
        return False
    dx, dy = DIRECTIONS[direction]
    length = (moved[0] ** 2 + moved[1] ** 2) ** 0.5
    along = moved[0] * dx + moved[1] * dy
    return length > 0 and along >= MAX_ANGLE_COS * length and along >= MIN_TRAVEL * frame_side


def alpha_sharpness(alpha: torch.Tensor) -> float:
    touched = alpha > 0.02
    if not touched.any():
        return 0.0
    decisive = (alpha < 0.1) | (alpha > 0.9)
    return float((decisive & touched).sum() / touched.sum())


def region_labels(mask: torch.Tensor) -> torch.Tensor:
    """Labels [..., H, W] of 8-connected regions of a bool mask, per leading index: 0 = background, else the largest
    flat index of the region's pixels plus one."""
    shape = mask.shape
    flat = mask.reshape(-1, 1, *shape[-2:])
    labels = torch.arange(1, flat.numel() + 1, dtype=torch.float32).reshape(flat.shape) * flat
    while True:  # each pass spreads the largest label one pixel; stops when the regions are uniform
        spread = F.max_pool2d(labels, 3, stride=1, padding=1) * flat
        if torch.equal(spread, labels):
            return labels.reshape(shape).long()
        labels = spread


def dilate(mask: torch.Tensor, pixels: int = REGION_DILATION) -> torch.Tensor:
    """Bool [T, H, W] grown by `pixels` in every direction."""
    return F.max_pool2d(mask.float()[:, None], 2 * pixels + 1, stride=1, padding=pixels)[:, 0] > 0


def consistency_errors(full, background, foregrounds, alphas) -> tuple[float, float]:
    """(global, inside the dilated opaque region of any foreground) mean |recomposed - full|."""
    recomposed = over_background(background, foregrounds, alphas)
    error = (recomposed.float() - full.float()).abs().mean(0)  # [T, H, W]
    region = dilate(torch.stack([opaque(a) for a in alphas]).any(0))
    inside = float(error[region].mean()) if region.any() else float("nan")
    return float(error.mean()), inside


def background_leak(background: torch.Tensor, foreground: torch.Tensor, alpha: torch.Tensor) -> float:
    region = opaque(alpha)
    if not region.any():
        return float("nan")
    close = (background - foreground).abs().amax(0) <= LEAK_TOLERANCE
    return float(close[region].float().mean())


def presence_in_full(full: torch.Tensor, background: torch.Tensor, foreground: torch.Tensor,
                     alpha: torch.Tensor) -> float:
    region = opaque(alpha)
    to_fg, to_bg = (full - foreground).abs().mean(0), (full - background).abs().mean(0)
    shown = []
    for t in range(full.shape[1]):
        r = region[t]
        shown.append(bool(r.any() and to_fg[t][r].mean() < to_bg[t][r].mean()))
    return sum(shown) / len(shown)


def separation(alphas: list[torch.Tensor]) -> float:
    """Largest mean per-frame IoU between two foregrounds' opaque masks (0 = fully apart)."""
    worst = 0.0
    for i in range(len(alphas)):
        for j in range(i):
            a, b = opaque(alphas[i]).flatten(1), opaque(alphas[j]).flatten(1)
            union = (a | b).sum(1).clamp_min(1).float()
            worst = max(worst, float(((a & b).sum(1) / union).mean()))
    return worst


def foreground_metrics(clip, index: int) -> dict:
    """Metrics of foreground `index` (0-based) of a LayeredClip."""
    alpha, foreground = clip.alphas[index], clip.foregrounds[index]
    present_fraction, _ = presence(alpha)
    points = centroids(alpha)
    caption = clip.prompts.get("foregrounds", [""] * clip.num_foregrounds)[index] if clip.prompts else ""
    direction = prompted_direction(clip.prompts.get("full", ""), caption) if clip.prompts else None
    moved = travel(points)
    row = {
        "presence": present_fraction,
        "alpha_stability": alpha_stability(alpha),
        "trajectory_ratio": trajectory_ratio(points),
        "travel_px": None if moved is None else round((moved[0] ** 2 + moved[1] ** 2) ** 0.5, 3),
        "alpha_sharpness": alpha_sharpness(alpha),
        "background_leak": background_leak(clip.background, foreground, alpha),
        "presence_in_full": presence_in_full(clip.full, clip.background, foreground, alpha),
        "direction": direction,
    }
    if direction is not None:
        row["direction_agrees"] = direction_agrees(points, direction, min(alpha.shape[-2:]))
    return row


def clip_layer_metrics(clip) -> dict:
    """Every layer metric of a LayeredClip: per foreground, and the sample-level ones."""
    per_fg = [foreground_metrics(clip, i) for i in range(clip.num_foregrounds)]
    global_error, region_error = consistency_errors(clip.full, clip.background, clip.foregrounds, clip.alphas)
    out = {"consistency": global_error, "consistency_in_alpha": region_error, "foregrounds": per_fg}
    if clip.num_foregrounds > 1:
        out["separation_iou"] = separation(clip.alphas)
    return out
