"""The two vision-language stages (annotation, quality control) on any chat model that takes images, e.g.
Qwen3-VL served by vLLM or SGLang, or a hosted API, through the `openai` client. A model is anything with
`chat(system, parts, stage) -> str`, parts being text strings and images [H, W, 3] in [0, 1]; its answers are
checked by the pipeline (stages.parse_annotation / parse_scores).
"""
from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Protocol, Sequence, Union

import numpy as np
import torch

from .prompts import ANNOTATION_SYSTEM, ANNOTATION_USER, QUALITY_FRAME, QUALITY_SYSTEM
from .stages import Rejection

Part = Union[str, torch.Tensor]
# HTTP statuses that say this request (this video) cannot be served, not that the server is down.
REQUEST_REFUSED = (400, 413, 422)


class ChatModel(Protocol):
    def chat(self, system: str, parts: Sequence[Part], stage: str) -> str: ...


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def data_url(image: torch.Tensor, quality: int = 95) -> str:
    """An image [H, W, 3] in [0, 1] as a base64 JPEG data URL, the form every OpenAI-compatible server accepts."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def sample_frames(frames: torch.Tensor, count: int) -> list[torch.Tensor]:
    """`count` frames spread evenly over the clip, first and last included."""
    indices = torch.linspace(0, frames.shape[0] - 1, min(count, frames.shape[0])).round().long().unique()
    return [frames[i] for i in indices]


class OpenAIVLM:
    """A chat model behind an OpenAI-compatible endpoint. Connection failures and server errors stop the run (a
    rerun continues where it stopped); a request the server refuses (too large, malformed) rejects the video."""

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", max_tokens: int = 1024,
                 timeout: float = 300.0, max_retries: int = 3):
        try:
            import openai
        except ImportError:
            raise RuntimeError("the openai backend needs the openai package: pip install openai") from None
        self.openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.model, self.max_tokens = model, max_tokens

    def chat(self, system: str, parts: Sequence[Part], stage: str) -> str:
        content: list[dict[str, Any]] = [
            {"type": "text", "text": part} if isinstance(part, str) else
            {"type": "image_url", "image_url": {"url": data_url(part)}} for part in parts]
        try:
            response = self.client.chat.completions.create(
                model=self.model, temperature=0.0, max_tokens=self.max_tokens,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": content}])
        except self.openai.APIStatusError as error:
            if error.status_code in REQUEST_REFUSED:
                raise Rejection(stage, f"the server refused the request ({error.status_code}): "
                                       f"{str(error)[:200]}") from None
            raise RuntimeError(f"the VLM server at {self.client.base_url} failed ({error.status_code}): "
                               f"{str(error)[:200]}; rerun to continue") from None
        except self.openai.APIConnectionError as error:
            raise RuntimeError(f"cannot reach the VLM server at {self.client.base_url} ({error}); start it or fix "
                               f"--vlm-url, then rerun to continue") from None
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            raise Rejection(stage, "the server's answer has no message text")
        return text


class VLMAnnotator:
    """Annotation by a chat model shown `frames` frames of the video and its caption."""

    def __init__(self, model: ChatModel, frames: int = 8):
        self.model, self.frames = model, frames

    def annotate(self, frames: torch.Tensor, caption: str, hints: Mapping[str, Any]) -> str:
        parts: list[Part] = [ANNOTATION_USER.format(caption=caption), *sample_frames(frames, self.frames)]
        return self.model.chat(ANNOTATION_SYSTEM, parts, "annotate")


class VLMQualityChecker:
    """Quality scores by a chat model shown every key frame's four panels, each after its frame number."""

    def __init__(self, model: ChatModel):
        self.model = model

    def score(self, panels: Sequence[tuple[int, torch.Tensor]], description: str) -> str:
        parts: list[Part] = []
        for index, image in panels:
            parts += [QUALITY_FRAME.format(index=index), image]
        return self.model.chat(QUALITY_SYSTEM.format(description=description), parts, "quality")
