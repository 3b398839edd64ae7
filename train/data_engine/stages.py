"""The engine's five stages as small interfaces, what flows between them, and the checks that every model answer
passes before the engine believes it (model output is untrusted input).

Videos are float32 tensors [T, H, W, 3] in [0, 1] ("frames"); masks and alphas are [T, H, W] or [H, W] in [0, 1].
A stage that finds the video unusable raises `Rejection(stage, reason)`; the runner records it and moves on.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch

STAGES = ("read", "annotate", "first_frame_mask", "matting", "removal", "quality")
SUBJECT_SIZES = ("small", "medium", "large")
MAX_SUBJECTS = 2
SCORE_RANGE = (0, 10)


class Rejection(Exception):
    """A video (or a model's answer about it) that cannot become a sample; `stage` says where, the message why."""

    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass
class Subject:
    id: str
    caption: str


@dataclass
class Annotation:
    """What the annotator says about a video; None where a backend cannot tell (the rule using it is skipped)."""

    subjects: list[Subject]
    full_caption: str
    background_caption: str
    always_visible: bool | None = None
    subject_size: str | None = None
    camera_stable: bool | None = None
    quality: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the stage interfaces


class Annotator(Protocol):
    def annotate(self, frames: torch.Tensor, caption: str, hints: Mapping[str, Any]) -> Annotation | str:
        """What the video shows: an Annotation, or a model's raw answer for `parse_annotation`. hints: the video
        list's optional `foregrounds` / `background` captions."""


class FirstFrameMasker(Protocol):
    def first_frame_mask(self, frames: torch.Tensor, caption: str,
                         exclude: torch.Tensor | None = None) -> torch.Tensor:
        """[H, W] mask of the subject named by `caption` in frame 0, not one lying on `exclude` (the subjects found
        before it); the whole clip is given for backends that need motion to find it."""


class Matter(Protocol):
    def matte(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        """[T, H, W] alpha of the subject whose frame-0 mask is `first_mask`."""


class Remover(Protocol):
    needs_static_camera: bool

    def remove(self, frames: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """[T, H, W, 3] clean background: `frames` with every foreground (union alpha [T, H, W]) taken out."""


class QualityChecker(Protocol):
    def score(self, panels: Sequence[tuple[int, torch.Tensor]], description: str) -> str | dict:
        """Scores of each key frame's four-panel image [H, 4W, 3]: the raw answer, checked by `parse_scores`."""


# ---------------------------------------------------------------- checking model output


def extract_json(text: Any, stage: str) -> Any:
    """The JSON value in a model's answer (a bare object, or one inside a ``` fence or surrounding prose)."""
    if isinstance(text, (dict, list)):
        return text
    if not isinstance(text, str) or not text.strip():
        raise Rejection(stage, f"the model gave no answer ({text!r:.80})")
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise Rejection(stage, f"the model's answer holds no JSON object: {text.strip()[:120]!r}")
    try:
        return json.loads(candidate[start:end + 1])
    except json.JSONDecodeError as error:
        raise Rejection(stage, f"the model's answer is not valid JSON ({error.msg} at char {error.pos}): "
                               f"{text.strip()[:120]!r}") from None


def _text(value: Any, what: str, stage: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Rejection(stage, f"{what} must be a non-empty string, got {value!r:.80}")
    return value.strip()


def _flag(value: Any, what: str, stage: str) -> bool:
    if not isinstance(value, bool):
        raise Rejection(stage, f"{what} must be true or false, got {value!r:.40}")
    return value


def _score(value: Any, what: str, stage: str) -> int:
    # JSON has one number type: 7.0 is accepted as 7, 7.5 and "7" are not scores
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or not SCORE_RANGE[0] <= value <= SCORE_RANGE[1]:
        raise Rejection(stage, f"{what} must be an integer {SCORE_RANGE[0]}-{SCORE_RANGE[1]}, got {value!r:.40}")
    return int(value)


def parse_annotation(answer: Any) -> Annotation:
    """Check an annotator's JSON (the schema of prompts.ANNOTATION_SYSTEM) and turn it into an Annotation."""
    stage = "annotate"
    data = extract_json(answer, stage)
    if not isinstance(data, dict):
        raise Rejection(stage, "the annotation must be a JSON object")
    subjects = data.get("subjects")
    if not isinstance(subjects, list):
        raise Rejection(stage, f"'subjects' must be a list, got {subjects!r:.80}")
    if not subjects:
        raise Rejection(stage, "no valid subject (the annotator found none)")
    if len(subjects) > MAX_SUBJECTS:
        raise Rejection(stage, f"{len(subjects)} subjects; at most {MAX_SUBJECTS} are kept")
    parsed = []
    for number, subject in enumerate(subjects, start=1):
        if not isinstance(subject, dict):
            raise Rejection(stage, f"subject {number} must be a JSON object")
        parsed.append(Subject(str(subject.get("id", number)), _text(subject.get("caption"),
                                                                   f"subject {number}'s caption", stage)))
    size = data.get("subject_size")
    if size not in SUBJECT_SIZES:
        raise Rejection(stage, f"'subject_size' must be one of {SUBJECT_SIZES}, got {size!r:.40}")
    return Annotation(subjects=parsed, full_caption=_text(data.get("full_caption"), "'full_caption'", stage),
                      background_caption=_text(data.get("background_caption"), "'background_caption'", stage),
                      always_visible=_flag(data.get("always_visible"), "'always_visible'", stage),
                      subject_size=size, camera_stable=_flag(data.get("camera_stable"), "'camera_stable'", stage),
                      quality=_score(data.get("quality"), "'quality'", stage))


def parse_scores(answer: Any, key_frames: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Check a quality answer {"<frame>": [bg_score, fg_score], ...}: every key frame present, integers 0-10."""
    stage = "quality"
    data = extract_json(answer, stage)
    if not isinstance(data, dict):
        raise Rejection(stage, "the scores must be a JSON object keyed by frame index")
    scores = {}
    for frame in key_frames:
        pair = data.get(str(frame))
        if not isinstance(pair, list) or len(pair) != 2:
            raise Rejection(stage, f"frame {frame} needs [bg_score, fg_score], got {pair!r:.60}")
        scores[frame] = (_score(pair[0], f"frame {frame}'s bg_score", stage),
                         _score(pair[1], f"frame {frame}'s fg_score", stage))
    return scores


def check_frames(video: Any, like: torch.Tensor, stage: str) -> torch.Tensor:
    """A backend's video [T, H, W, 3] (or alpha [T, H, W]) checked against the input's size and for NaN / inf."""
    if not isinstance(video, torch.Tensor):
        raise Rejection(stage, f"the backend returned {type(video).__name__}, not a tensor")
    if tuple(video.shape) != tuple(like.shape):
        raise Rejection(stage, f"the backend returned shape {tuple(video.shape)}, expected {tuple(like.shape)}")
    video = video.float()
    bad = ~torch.isfinite(video)
    if bad.any():
        frames = sorted({int(i) for i in bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten()}) \
            if video.dim() >= 3 else []
        raise Rejection(stage, f"the backend returned NaN or inf values (frames {frames[:8]})")
    return video.clamp(0, 1)


def check_mask(mask: Any, height: int, width: int, stage: str, min_pixels: int = 1) -> torch.Tensor:
    """A first-frame mask [H, W] in [0, 1], not empty."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (height, width):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise Rejection(stage, f"the mask has shape {shape}, expected ({height}, {width})")
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise Rejection(stage, "the mask holds NaN or inf values")
    mask = mask.clamp(0, 1)
    if int((mask > 0.5).sum()) < min_pixels:
        raise Rejection(stage, "empty mask: the subject was not found in the first frame")
    return mask
