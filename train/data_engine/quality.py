"""Quality control: key frames, the four-panel image each is judged on, and the interval rule that cuts samples.

Key frames are 0, step, 2·step, ... (the paper: step 10). Each is shown as four panels side by side,
original | mask (white = foreground) | background | foreground on black. An interval [N, N + step] between two
adjacent key frames is kept when both scores (background, foreground) of both ends are at least `threshold` (the
paper: 7); adjacent kept intervals join into one segment, and each segment of at least `min_frames` frames becomes a
sample. Frames after the last key frame are never judged and so never kept.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

KEY_STEP = 10
THRESHOLD = 7


def key_frames(num_frames: int, step: int = KEY_STEP) -> list[int]:
    return list(range(0, num_frames, step))


def four_panels(original: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """[H, 4W, 3]: original [H, W, 3] | alpha [H, W] as white | background [H, W, 3] | original * alpha on black."""
    mask = alpha[..., None].expand_as(original)
    return torch.cat([original, mask, background, original * mask], dim=1)


def qualified_intervals(scores: Mapping[int, tuple[int, int]], step: int = KEY_STEP,
                        threshold: int = THRESHOLD) -> list[tuple[int, int]]:
    """[(N, N + step)] for every pair of adjacent key frames whose four scores are all >= threshold."""
    def good(frame: int) -> bool:
        return frame in scores and min(scores[frame]) >= threshold

    return [(frame, frame + step) for frame in sorted(scores) if good(frame) and good(frame + step)]


def segments(intervals: Sequence[tuple[int, int]], min_frames: int = 1) -> list[tuple[int, int]]:
    """Adjacent intervals joined into [(first, last)] (inclusive frame indices), those shorter than min_frames
    dropped."""
    joined: list[list[int]] = []
    for start, end in sorted(intervals):
        if joined and start <= joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    return [(start, end) for start, end in joined if end - start + 1 >= min_frames]
