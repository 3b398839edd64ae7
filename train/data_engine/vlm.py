"""The two vision-language stages (annotation, quality control) on any chat model that takes images, e.g.
Qwen3-VL served by vLLM or SGLang, or a hosted API, through the `openai` client, or run in this process through
transformers. A model is anything with `chat(system, parts, stage) -> str`, parts being text strings and images
[H, W, 3] in [0, 1]; its answers are checked by the pipeline (stages.parse_annotation / parse_scores).
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
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


class TransformersVLM:
    """A chat model run in this process through transformers, e.g. Qwen3-VL-8B-Instruct on one GPU: its tokenizer's
    chat template, its image processor and greedy `generate`. The inputs are prepared as the model's processor
    prepares images (each image placeholder token repeated once per merged patch), from the tokenizer and image
    processor alone: transformers' Qwen-VL processor classes cannot be built without torchvision, for their video
    half, while the image processor falls back to PIL."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, max_tokens: int = 1024,
                 image_token: str = "<|image_pad|>"):
        self.model, self.tokenizer, self.image_processor = model.eval(), tokenizer, image_processor
        self.max_tokens, self.image_token = max_tokens, image_token
        if tokenizer.chat_template is None:
            raise ValueError("the VLM's tokenizer has no chat template; give a model folder with chat_template.jinja "
                             "(or chat_template.json) beside the tokenizer")
        if tokenizer.convert_tokens_to_ids(image_token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the VLM's tokenizer has no {image_token} token: not a Qwen-VL style model")

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cuda", dtype: str | None = None,
                        max_tokens: int = 1024) -> "TransformersVLM":
        """dtype: bfloat16 on a GPU, float32 on CPU unless given."""
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        if tokenizer.chat_template is None:  # a processor's template saved apart from the tokenizer
            folder = Path(path)
            if (folder / "chat_template.jinja").is_file():
                tokenizer.chat_template = (folder / "chat_template.jinja").read_text()
            elif (folder / "chat_template.json").is_file():
                tokenizer.chat_template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
        dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
        model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model.to(device), tokenizer, transformers.AutoImageProcessor.from_pretrained(path), max_tokens)

    @torch.inference_mode()
    def chat(self, system: str, parts: Sequence[Part], stage: str) -> str:
        content = [{"type": "text", "text": part} if isinstance(part, str) else {"type": "image"} for part in parts]
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                    {"role": "user", "content": content}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = [to_uint8(part) for part in parts if not isinstance(part, str)]
        inputs: dict[str, Any] = {}
        if images:
            inputs = dict(self.image_processor(images=images, return_tensors="pt"))
            merge = self.image_processor.merge_size ** 2
            pieces = text.split(self.image_token)
            if len(pieces) != len(images) + 1:
                raise ValueError(f"the chat template wrote {len(pieces) - 1} image placeholders for {len(images)} "
                                 f"images")
            counts = (inputs["image_grid_thw"].prod(-1) // merge).tolist()
            text = pieces[0] + "".join(self.image_token * n + piece for n, piece in zip(counts, pieces[1:]))
        tokens = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in {**tokens, **inputs}.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False)
        answer = self.tokenizer.decode(out[0, tokens["input_ids"].shape[1]:], skip_special_tokens=True)
        if not answer.strip():
            raise Rejection(stage, "the model's answer is empty")
        return answer


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
