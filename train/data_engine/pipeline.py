"""One video through the five stages: annotate, first-frame mask, matting, removal, quality control.

`decompose` returns the layered clips that passed, or raises `Rejection`; either way `report` holds what every stage
that ran found (it goes into each sample's metadata and into the video's record).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .quality import KEY_STEP, THRESHOLD, four_panels, key_frames, qualified_intervals, segments
from .stages import (Annotation, Annotator, FirstFrameMasker, Matter, QualityChecker, Rejection, Remover,
                     check_frames, check_mask, parse_annotation, parse_scores)


@dataclass
class Rules:
    """What a video must satisfy to become samples (the paper's values where it gives them)."""

    min_area: float = 0.10        # each subject's share of frame 0, as the annotation prompt asks
    max_area: float = 0.70
    min_quality: int = 5          # the annotator's 0-10 video quality
    key_step: int = KEY_STEP      # key frames every key_step frames
    min_score: int = THRESHOLD    # both scores of both ends of an interval
    min_frames: int = 5           # shortest sample kept


@dataclass
class Engine:
    annotator: Annotator
    masker: FirstFrameMasker
    matter: Matter
    remover: Remover
    checker: QualityChecker | None  # None: no quality control, the whole clip is one sample
    rules: Rules = field(default_factory=Rules)


@dataclass
class LayeredClip:
    """A cut of the video: frames and background [T, H, W, 3], alphas [N, T, H, W], captions, source frames."""

    full: torch.Tensor
    background: torch.Tensor
    alphas: torch.Tensor
    captions: dict[str, Any]
    first: int
    last: int


def union(alphas: torch.Tensor) -> torch.Tensor:
    """[T, H, W] coverage of all foregrounds [N, T, H, W] together."""
    return 1 - (1 - alphas).prod(0)


def annotate(engine: Engine, frames: torch.Tensor, caption: str, hints: Mapping[str, Any]) -> Annotation:
    answer = engine.annotator.annotate(frames, caption, hints)
    annotation = answer if isinstance(answer, Annotation) else parse_annotation(answer)
    if annotation.always_visible is False:
        raise Rejection("annotate", "a subject is not visible for the whole clip")
    if annotation.camera_stable is False and getattr(engine.remover, "needs_static_camera", False):
        raise Rejection("annotate", "the camera moves and the removal backend needs a static camera")
    if annotation.quality is not None and annotation.quality < engine.rules.min_quality:
        raise Rejection("annotate", f"video quality {annotation.quality} is below {engine.rules.min_quality}")
    return annotation


def first_frame_masks(engine: Engine, frames: torch.Tensor, annotation: Annotation) -> torch.Tensor:
    height, width = frames.shape[1:3]
    masks = []
    taken = torch.zeros(height, width)
    for subject in annotation.subjects:
        mask = check_mask(engine.masker.first_frame_mask(frames, subject.caption, taken), height, width,
                          "first_frame_mask")
        area = float((mask > 0.5).float().mean())
        if not engine.rules.min_area <= area <= engine.rules.max_area:
            raise Rejection("first_frame_mask", f"subject {subject.caption!r} covers {area:.1%} of the frame, "
                                                f"outside {engine.rules.min_area:.0%}-{engine.rules.max_area:.0%}")
        masks.append(mask)
        taken = torch.maximum(taken, mask)
    return torch.stack(masks)


def decompose(engine: Engine, frames: torch.Tensor, caption: str, hints: Mapping[str, Any],
              report: dict[str, Any]) -> list[LayeredClip]:
    """The layered clips of one video [T, H, W, 3]; `report` gets each stage's findings as it goes."""
    stages = report.setdefault("stages", {})
    frames = check_frames(frames, frames, "read")
    annotation = annotate(engine, frames, caption, hints)
    stages["annotate"] = annotation.to_json()

    masks = first_frame_masks(engine, frames, annotation)
    stages["first_frame_mask"] = {"areas": [round(float((m > 0.5).float().mean()), 4) for m in masks]}

    alphas = []
    for subject, mask in zip(annotation.subjects, masks):
        alpha = check_frames(engine.matter.matte(frames, mask), frames[..., 0], "matting")
        if not (alpha > 0.5).any():
            raise Rejection("matting", f"empty matte for {subject.caption!r}")
        alphas.append(alpha)
    alphas = torch.stack(alphas)
    coverage = union(alphas)
    stages["matting"] = {"mean_area": [round(float((a > 0.5).float().mean()), 4) for a in alphas],
                         "frames_empty": [int((~(a > 0.5).flatten(1).any(1)).sum()) for a in alphas]}

    background = check_frames(engine.remover.remove(frames, coverage), frames, "removal")
    stages["removal"] = {"needs_static_camera": bool(getattr(engine.remover, "needs_static_camera", False))}

    rules = engine.rules
    if engine.checker is None:
        kept = [(0, frames.shape[0] - 1)]
        stages["quality"] = {"checked": False}
    else:
        keys = key_frames(frames.shape[0], rules.key_step)
        panels = [(k, four_panels(frames[k], coverage[k], background[k])) for k in keys]
        scores = parse_scores(engine.checker.score(panels, annotation.full_caption), keys)
        intervals = qualified_intervals(scores, rules.key_step, rules.min_score)
        kept = segments(intervals, rules.min_frames)
        stages["quality"] = {"checked": True, "scores": {str(k): list(v) for k, v in scores.items()},
                             "intervals": [list(i) for i in intervals]}
        if not kept:
            raise Rejection("quality", f"no interval of {rules.key_step} frames has all scores >= "
                                       f"{rules.min_score} (scores {stages['quality']['scores']})")
    captions = {"full": annotation.full_caption, "background": annotation.background_caption,
                "foregrounds": [s.caption for s in annotation.subjects]}
    return [LayeredClip(frames[a:b + 1], background[a:b + 1], alphas[:, a:b + 1], captions, a, b) for a, b in kept]
