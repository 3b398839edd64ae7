"""Backends that need no weights, exact on static-camera footage: a temporal-median clean plate, background
subtraction, mask propagation by motion, a soft alpha from colour projection, and a quality check that measures the
layers against the original.

All work on [T, H, W, 3] frames in [0, 1] with torch only. A pixel counts as moving when some channel differs from
the clean plate by more than `threshold`; that is the one assumption: the subject differs from what is behind it.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from layert2v_core.evaluation.layer_metrics import region_labels as components

from .stages import Annotation, Rejection, Subject

THRESHOLD = 0.1
# RGB -> (Y, Cb, Cr) of BT.709 with the colour axes scaled down: video codecs keep colour at half resolution, so the
# soft alpha leans on brightness, which stays sharp, wherever the brightness contrast is enough.
CHROMA_WEIGHT = 0.25
CONTRAST_SPACE = torch.tensor([[0.2126, 0.7152, 0.0722],
                               [-0.1146 * CHROMA_WEIGHT, -0.3854 * CHROMA_WEIGHT, 0.5 * CHROMA_WEIGHT],
                               [0.5 * CHROMA_WEIGHT, -0.4542 * CHROMA_WEIGHT, -0.0458 * CHROMA_WEIGHT]])
# Named colours a caption may use to pick one of several moving regions (sRGB in [0, 1]).
COLOUR_WORDS = {
    "red": (0.9, 0.1, 0.1), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.9, 0.1), "green": (0.1, 0.7, 0.2),
    "cyan": (0.1, 0.85, 0.9), "blue": (0.1, 0.2, 0.85), "purple": (0.5, 0.15, 0.7), "magenta": (0.88, 0.12, 0.84),
    "pink": (0.95, 0.6, 0.75), "white": (0.97, 0.97, 0.97), "grey": (0.5, 0.5, 0.5), "gray": (0.5, 0.5, 0.5),
    "black": (0.05, 0.05, 0.05), "brown": (0.45, 0.28, 0.12),
}


# ---------------------------------------------------------------- image operations on [..., H, W] masks


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean mask [..., H, W] grown by `radius` pixels (square neighbourhood)."""
    if radius <= 0:
        return mask
    shape = mask.shape
    grown = F.max_pool2d(mask.reshape(-1, 1, *shape[-2:]).float(), 2 * radius + 1, stride=1, padding=radius)
    return grown.reshape(shape) > 0.5


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return ~dilate(~mask, radius)


def fill_holes(image: torch.Tensor, missing: torch.Tensor, rings: int | None = None) -> torch.Tensor:
    """[H, W, C] with the `missing` pixels [H, W] filled from their known neighbours, ring by ring inwards (at most
    `rings` rings; pixels farther away keep their value)."""
    image = image.clone()
    known = ~missing
    if not known.any():
        raise ValueError("no known pixel to fill from")
    values = torch.where(known[..., None], image, torch.zeros_like(image)).permute(2, 0, 1)[None]
    weight = known.float()[None, None]
    for _ in range(rings if rings is not None else sum(image.shape[:2])):
        if bool(known.all()):
            break
        kernel = torch.ones(1, 1, 3, 3)
        total = F.conv2d(values.reshape(-1, 1, *values.shape[-2:]), kernel, padding=1).reshape(values.shape)
        count = F.conv2d(weight, kernel, padding=1)
        ring = (count[0, 0] > 0) & ~known
        values = torch.where(ring, total / count.clamp_min(1), values)
        weight = torch.where(ring, torch.ones_like(weight), weight)
        known = known | ring
    return torch.where(known[..., None], values[0].permute(1, 2, 0), image)


# ---------------------------------------------------------------- clean plate and motion


def clean_plate(frames: torch.Tensor, occluded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel temporal median of the frames [T, H, W, 3], over the frames where the pixel is not `occluded`
    [T, H, W]; pixels occluded in every frame are filled from around them. Returns (plate [H, W, 3], never_seen
    [H, W])."""
    values = frames if occluded is None else frames.masked_fill(occluded[..., None], float("nan"))
    plate = values.nanmedian(dim=0).values
    never_seen = torch.isnan(plate[..., 0])
    if never_seen.all():
        raise Rejection("removal", "the foreground covers every pixel in every frame; no background to recover")
    if never_seen.any():
        plate = fill_holes(plate, never_seen)
    return plate, never_seen


def difference(frames: torch.Tensor, plate: torch.Tensor) -> torch.Tensor:
    """[T, H, W] largest channel difference from the plate."""
    return (frames - plate).abs().amax(-1)


def foreground_colours(frames: torch.Tensor, moving: torch.Tensor, bins: int = 16,
                       ratio: float = 3.0) -> torch.Tensor:
    """[T, H, W] True where a pixel's colour is far more common among `moving` pixels than among pixels that
    never move (a colour histogram per class, as in GrabCut's colour models): the colours of the subjects."""
    index = (frames * bins).long().clamp(0, bins - 1)
    index = (index[..., 0] * bins + index[..., 1]) * bins + index[..., 2]
    still = ~moving.any(0, keepdim=True).expand_as(moving)
    def histogram(where: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(index[where], minlength=bins ** 3).float().reshape(1, 1, bins, bins, bins)
        counts = F.avg_pool3d(counts, 3, stride=1, padding=1)  # neighbouring colours count too
        return counts.flatten() / counts.sum().clamp_min(1)
    moving_share, still_share = histogram(moving), histogram(still)
    return (moving_share > ratio * still_share + 1e-4)[index]


_last_motion: list = []  # (frames, threshold, result) of the latest video: the stages of one video share it


def moving_regions(frames: torch.Tensor, threshold: float = THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """(moving [T, H, W] boolean, plate [H, W, 3]). A plain median plate fails where a subject rests on a pixel for
    most of the clip, so the plate is taken again over the frames whose colour at the pixel is not a subject's
    colour; what still differs from it is moving."""
    if _last_motion and _last_motion[0] is frames and _last_motion[1] == threshold:
        return _last_motion[2]
    plate, _ = clean_plate(frames)
    first = difference(frames, plate) > threshold
    plate, _ = clean_plate(frames, foreground_colours(frames, first))
    moving = erode(dilate(difference(frames, plate) > threshold, 1), 1)  # close pinholes from noise
    _last_motion[:] = [frames, threshold, (moving, plate)]
    return moving, plate


def regions_in(moving: torch.Tensor, min_pixels: int) -> list[torch.Tensor]:
    """The connected regions [H, W] of one frame's moving mask with at least min_pixels pixels, largest first."""
    labels = components(moving)
    found = [labels == value for value in labels.unique() if value != 0]
    found = [region for region in found if int(region.sum()) >= min_pixels]
    return sorted(found, key=lambda region: -int(region.sum()))


def min_region_pixels(height: int, width: int, min_area: float) -> int:
    return max(4, int(min_area * height * width))


# ---------------------------------------------------------------- the stage backends


class CaptionAnnotator:
    """Annotation without a model: captions come from the video list (`caption`, optional `foregrounds` and
    `background`), the subjects are the moving regions of frame 0, camera stability is the share of moving pixels.

    Without foreground captions in the list the subjects get generic captions; use a VLM backend for real ones.
    """

    def __init__(self, threshold: float = THRESHOLD, min_area: float = 0.002, max_moving: float = 0.7):
        self.threshold, self.min_area, self.max_moving = threshold, min_area, max_moving

    def annotate(self, frames: torch.Tensor, caption: str, hints: Mapping[str, Any]) -> Annotation:
        foregrounds, background = hints.get("foregrounds"), hints.get("background")
        moving, _ = moving_regions(frames, self.threshold)
        height, width = frames.shape[1:3]
        regions = regions_in(moving[0], min_region_pixels(height, width, self.min_area))
        share = float(moving.float().mean())
        if foregrounds:
            captions = list(foregrounds)
            if len(regions) < len(captions):
                raise Rejection("annotate", f"the list names {len(captions)} subject(s) but frame 0 has "
                                            f"{len(regions)} moving region(s)")
        else:
            captions = [f"moving object {i + 1}" for i in range(min(2, len(regions)))]
        if not captions:
            raise Rejection("annotate", "no valid subject (nothing moves in frame 0)")
        area = sum(float(r.float().mean()) for r in regions[:len(captions)])
        size = "small" if area < 0.2 else "medium" if area < 0.45 else "large"
        return Annotation(subjects=[Subject(str(i + 1), c) for i, c in enumerate(captions)],
                          full_caption=caption, background_caption=background or "the scene",
                          always_visible=bool(moving.flatten(1).any(1).all()), subject_size=size,
                          camera_stable=share < self.max_moving, quality=None,
                          extra={"moving_share": round(share, 4)})


def colour_named(caption: str) -> tuple[float, float, float] | None:
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in COLOUR_WORDS:
            return COLOUR_WORDS[word]
    return None


class MotionMasker:
    """First-frame mask: the moving region of frame 0 whose mean colour is closest to a colour the caption names
    (the largest free region when it names none)."""

    def __init__(self, threshold: float = THRESHOLD, min_area: float = 0.002):
        self.threshold, self.min_area = threshold, min_area

    def first_frame_mask(self, frames: torch.Tensor, caption: str,
                         exclude: torch.Tensor | None = None) -> torch.Tensor:
        moving, _ = moving_regions(frames, self.threshold)
        height, width = frames.shape[1:3]
        regions = regions_in(moving[0], min_region_pixels(height, width, self.min_area))
        if exclude is not None:
            regions = [r for r in regions if not bool((r & (exclude > 0.5)).any())]
        if not regions:
            return torch.zeros(height, width)
        colour = colour_named(caption)
        if colour is None:
            return regions[0].float()
        target = torch.tensor(colour)
        inner = [erode(r, 1) if erode(r, 1).any() else r for r in regions]
        distance = [float((frames[0][r].mean(0) - target).norm()) for r in inner]
        return regions[min(range(len(regions)), key=distance.__getitem__)].float()


class MotionMatter:
    """Matting by propagation: each frame keeps the moving regions that touch the subject's previous mask grown by
    `search` (a fraction of the frame side); the alpha is the colour projection
    alpha = <frame - plate, F - plate> / |F - plate|^2 on a band around the region, with F the subject's colour
    spread outwards from its interior."""

    def __init__(self, threshold: float = THRESHOLD, search: float = 0.05, band: int = 2):
        self.threshold, self.search, self.band = threshold, search, band

    def matte(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        moving, plate = moving_regions(frames, self.threshold)
        labels = components(moving)
        radius = max(2, round(self.search * min(frames.shape[1:3])))
        previous = first_mask > 0.5
        hard = torch.zeros_like(moving)
        for t in range(frames.shape[0]):
            near = previous if t == 0 else dilate(previous, radius)
            touched = labels[t][near & moving[t]].unique()
            region = torch.isin(labels[t], touched[touched != 0])
            hard[t] = region
            if region.any():  # a lost subject (occluded) is searched for where it was last seen
                previous = region
        return self.soft_alpha(frames, plate, hard)

    def soft_alpha(self, frames: torch.Tensor, plate: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        band = dilate(hard, self.band)
        sure = erode(hard, 1)
        sure = torch.where(sure.flatten(1).any(1)[:, None, None], sure, hard)
        alpha = torch.zeros(hard.shape)
        for t in range(frames.shape[0]):
            if not band[t].any():
                continue
            colour = fill_holes(frames[t], ~sure[t], rings=self.band + 2) if sure[t].any() else frames[t]
            towards = (colour - plate) @ CONTRAST_SPACE.T
            contrast = (towards * towards).sum(-1)
            projected = (((frames[t] - plate) @ CONTRAST_SPACE.T) * towards).sum(-1) / contrast.clamp_min(1e-6)
            soft = torch.where(contrast > 0.0025, projected.clamp(0, 1), hard[t].float())
            alpha[t] = torch.where(band[t], soft, torch.zeros_like(soft))
        return alpha


class MedianRemover:
    """Foreground removal for a static camera: where a foreground covers a pixel, the temporal median of the frames
    in which that pixel is uncovered; elsewhere the frame itself."""

    needs_static_camera = True

    def __init__(self, margin: int = 1, visible_below: float = 0.02):
        self.margin, self.visible_below = margin, visible_below

    def remove(self, frames: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        covered = dilate(alpha > self.visible_below, self.margin)
        plate, _ = clean_plate(frames, covered)
        return torch.where(covered[..., None], plate.expand_as(frames), frames)


class MeasuredQualityChecker:
    """Scores from measurements on the four panels, no model. Background: 10 x the share of the mask's core where
    the background differs from the original (a subject left behind scores low). Foreground: 10 x the lesser of
    the share of changed pixels (original differs from background) that the mask covers, and the share of the
    mask's pixels that changed (holes and spill both score low)."""

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold

    def score(self, panels: Sequence[tuple[int, torch.Tensor]], description: str) -> dict:
        scores = {}
        for index, image in panels:
            original, mask, background, _ = image.chunk(4, dim=1)
            alpha = mask[..., 0]
            changed = (original - background).abs().amax(-1) > self.threshold
            core, covered = alpha > 0.9, alpha >= 0.5
            bg = float(changed[core].float().mean()) if core.any() else 0.0
            found = float(covered[changed].float().mean()) if changed.any() else 0.0
            spill = float(changed[covered].float().mean()) if covered.any() else 0.0
            scores[str(index)] = [int(round(10 * bg)), int(round(10 * min(found, spill)))]
        return scores
