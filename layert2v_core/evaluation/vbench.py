"""The five VBench dimensions of the paper's Table 1, on frames already in memory.

Definitions follow VBench (Vchitect/VBench): frames are 8-bit RGB [T, H, W, 3] as decoded from the video files,
differences are taken in 0..255, and every score is in [0, 1] with higher better.

- temporal flickering: 1 - mean |frame_t+1 - frame_t| / 255 over consecutive frames;
- motion smoothness: keep frames 0, 2, 4 ..., interpolate the ones between, 1 - mean |interpolated - real| / 255
  over the odd frames;
- subject consistency: per-frame image features (DINO ViT-B/16 in VBench); each frame after the first scores the
  mean of its cosine to the previous and to the first frame, each clamped at 0; the video scores their mean;
- aesthetic quality: per-frame LAION aesthetic score (a linear head on normalised CLIP ViT-L/14 image features) / 10,
  averaged over frames;
- text alignment: cosine of normalised video and text features (ViCLIP on 8 middle frames in VBench; here also
  CLIP's image features averaged over the same frames, labelled as such wherever it is reported).
The model-backed parts take their features from `feature_models.py`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

Interpolator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def to_frames(video: torch.Tensor) -> np.ndarray:
    """[C, T, H, W] in [0, 1] (C = 1 or 3) -> uint8 RGB [T, H, W, 3], rounded as a video writer would."""
    if video.dim() != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"expected a video [C, T, H, W] with 1 or 3 channels, got {tuple(video.shape)}")
    video = video.detach().float().expand(3, -1, -1, -1)
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench temporal flickering of uint8 frames [T, H, W, 3]: 1.0 for a still video, 0.0 for black/white flashes."""
    if len(frames) < 2:
        raise ValueError("temporal flickering needs at least 2 frames")
    differences = [_mean_abs(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]
    return (255.0 - float(np.mean(differences))) / 255.0


def motion_smoothness(frames: np.ndarray, interpolate: Interpolator) -> float:
    """VBench motion smoothness of uint8 frames [T, H, W, 3] with a midpoint interpolator (a, b) -> frame."""
    if len(frames) < 3:
        raise ValueError("motion smoothness needs at least 3 frames (every second one is interpolated)")
    kept = frames[0::2]
    errors = [_mean_abs(interpolate(kept[i], kept[i + 1]), frames[2 * i + 1])
              for i in range(len(kept) - 1) if 2 * i + 1 < len(frames)]
    return (255.0 - float(np.mean(errors))) / 255.0


def subject_consistency(features: torch.Tensor) -> float:
    """VBench subject consistency of per-frame features [T, D] (normalised here)."""
    if features.shape[0] < 2:
        raise ValueError("subject consistency needs at least 2 frames")
    features = F.normalize(features.float(), dim=-1)
    to_previous = (features[1:] * features[:-1]).sum(-1).clamp_min(0)
    to_first = (features[1:] * features[:1]).sum(-1).clamp_min(0)
    return float(((to_previous + to_first) / 2).mean())


def aesthetic_quality(image_features: torch.Tensor, head: torch.nn.Module) -> float:
    """VBench aesthetic quality: the LAION head on normalised per-frame CLIP features [T, D], / 10, averaged."""
    with torch.no_grad():
        scores = head(F.normalize(image_features.float(), dim=-1)).squeeze(-1)
    return float((scores / 10).mean())


def middle_frames(count: int, wanted: int = 8) -> list[int]:
    """VBench's 'middle' sampling: split the clip into `wanted` integer-bounded segments, take each one's middle
    (rounded down); a clip shorter than `wanted` gives all its frames, padded with the last."""
    if count < 1:
        raise ValueError("a clip needs at least one frame")
    edges = np.linspace(0, count, min(wanted, count) + 1).astype(int)
    picked = [int(start + end - 1) // 2 for start, end in zip(edges[:-1], edges[1:])]
    return picked + [picked[-1]] * (wanted - len(picked))


def text_alignment(video_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Cosine of a video feature [D] (or per-frame features [T, D], averaged first) and a text feature [D]."""
    if video_features.dim() == 2:
        video_features = F.normalize(video_features.float(), dim=-1).mean(0)
    return float(F.normalize(video_features.float(), dim=-1) @ F.normalize(text_features.float().flatten(), dim=-1))
