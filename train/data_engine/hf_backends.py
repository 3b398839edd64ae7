"""Model backends through maintained libraries, imported only when chosen: SAM3 text-to-mask (transformers) for the
first-frame mask, SAM2 video tracking (transformers) for matting, Wan2.1 VACE inpainting (diffusers) for removal
under a moving camera.

    Sam3Masker.from_pretrained("facebook/sam3")                           a transformers SAM3 folder (model + tokenizer)
    Sam2VideoMatter.from_pretrained("facebook/sam2.1-hiera-large")        a transformers SAM2 video folder
    VaceRemover.from_pretrained("Wan-AI/Wan2.1-VACE-1.3B-diffusers")      a diffusers WanVACEPipeline folder

Images are resized and normalised here rather than by the models' processors, which need torchvision.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# ImageNet statistics, what SAM2's video processor normalises with; SAM3's uses 0.5 for both.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM3_MEAN = SAM3_STD = (0.5, 0.5, 0.5)


def square_pixels(images: torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """[N, H, W, 3] in [0, 1] -> [N, 3, size, size] normalised, as the SAM processors prepare images."""
    resized = F.interpolate(images.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    return (resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _require(module: str, backend: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"the {backend} backend needs {module}: pip install {module}") from None


class Sam3Masker:
    """First-frame mask from the caption by SAM3's text-prompted detector: the highest-scoring instance above
    `threshold` that does not lie mostly on an earlier subject's mask (an empty mask when none does)."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device = "cpu", threshold: float = 0.3):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device, self.threshold = torch.device(device), threshold
        self.size = int(model.config.vision_config.backbone_config.image_size)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cuda") -> "Sam3Masker":
        transformers = _require("transformers", "sam3")
        model = transformers.Sam3Model.from_pretrained(path).to(device)
        return cls(model, transformers.AutoTokenizer.from_pretrained(path), device)

    @torch.inference_mode()
    def first_frame_mask(self, frames: torch.Tensor, caption: str,
                         exclude: torch.Tensor | None = None) -> torch.Tensor:
        height, width = frames.shape[1:3]
        text = self.tokenizer([caption], padding="max_length", truncation=True, max_length=self.max_tokens,
                              return_tensors="pt")
        output = self.model(pixel_values=square_pixels(frames[:1], self.size, SAM3_MEAN, SAM3_STD).to(self.device),
                            input_ids=text["input_ids"].to(self.device),
                            attention_mask=text["attention_mask"].to(self.device))
        scores = output.pred_logits[0].float().sigmoid()
        if output.presence_logits is not None:  # SAM3's "is the concept in the image at all" head
            scores = scores * output.presence_logits[0].float().sigmoid()
        masks = F.interpolate(output.pred_masks.float(), size=(height, width), mode="bilinear",
                              align_corners=False)[0].cpu() > 0
        taken = exclude > 0.5 if exclude is not None else torch.zeros(height, width, dtype=torch.bool)
        for index in scores.argsort(descending=True).tolist():
            if scores[index] < self.threshold:
                break
            area = int(masks[index].sum())
            if area and int((masks[index] & taken).sum()) * 2 < area:
                return masks[index].float()
        return torch.zeros(height, width)


class Sam2VideoMatter:
    """Matting by SAM2's video tracker: frame 0's mask goes in as the object's prompt and is propagated through the
    clip; the alpha is the tracker's mask probability at the video's size (a hard-edged matte)."""

    def __init__(self, model: Any, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        self.size = int(model.config.image_size)

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cuda") -> "Sam2VideoMatter":
        transformers = _require("transformers", "sam2")
        model = transformers.Sam2VideoModel.from_pretrained(path)
        return cls(model.to(device), device)

    @torch.inference_mode()
    def matte(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        height, width = frames.shape[1:3]
        pixels = square_pixels(frames, self.size, IMAGENET_MEAN, IMAGENET_STD).to(self.device)
        session = Sam2VideoInferenceSession(video=pixels, video_height=height, video_width=width,
                                            inference_device=self.device, video_storage_device=self.device,
                                            inference_state_device=self.device, dtype=torch.float32)
        prompt = F.interpolate(first_mask[None, None].float(), size=(self.size, self.size), mode="bilinear",
                               align_corners=False, antialias=True)
        index = session.obj_id_to_idx(1)
        session.add_mask_inputs(index, 0, (prompt >= 0.5).float().to(self.device))
        session.obj_with_new_inputs = [1]
        alpha = torch.zeros(frames.shape[:3])
        for output in self.model.propagate_in_video_iterator(session, start_frame_idx=0):
            logits = F.interpolate(output.pred_masks[:1].float(), size=(height, width), mode="bilinear",
                                   align_corners=False)
            alpha[output.frame_idx] = logits[0, 0].sigmoid().cpu()
        return alpha


class VaceRemover:
    """Foreground removal by Wan2.1 VACE inpainting: the covered pixels (union alpha, grown by `margin`) are masked
    out and generated from the background caption, the rest is kept from the video. Works with a moving camera.

    The clip is processed at a size and length VACE takes (sides multiples of 16, 4k + 1 frames) and resized back.
    """

    needs_static_camera = False

    def __init__(self, pipeline: Any, steps: int = 30, guidance: float = 5.0, margin: int = 4, max_side: int = 832,
                 prompt: str = "an empty scene, nothing in the foreground", seed: int = 0):
        self.pipeline, self.steps, self.guidance = pipeline, steps, guidance
        pipeline.set_progress_bar_config(disable=True)  # the run has its own progress bar
        self.margin, self.max_side, self.prompt, self.seed = margin, max_side, prompt, seed

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cuda", **settings) -> "VaceRemover":
        diffusers = _require("diffusers", "vace")
        _require("ftfy", "vace")  # diffusers' Wan pipelines clean prompts with it
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        return cls(diffusers.WanVACEPipeline.from_pretrained(path, torch_dtype=dtype).to(device), **settings)

    def _size(self, height: int, width: int) -> tuple[int, int]:
        scale = min(1.0, self.max_side / max(height, width))
        return max(16, round(height * scale / 16) * 16), max(16, round(width * scale / 16) * 16)

    @torch.inference_mode()
    def remove(self, frames: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        from .classical import dilate

        count, height, width = frames.shape[:3]
        length = (count - 1) // 4 * 4 + 1  # VACE takes 4k + 1 frames: the tail repeats the last result
        size = self._size(height, width)
        covered = dilate(alpha > 0.02, self.margin).float()

        def images(video: torch.Tensor) -> list:
            video = F.interpolate(video.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
            pixels = (video.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            return [Image.fromarray(p) for p in pixels]

        holes = frames * (1 - covered[..., None]) + 0.5 * covered[..., None]  # VACE's neutral grey in the holes
        result = self.pipeline(video=images(holes[:length]), mask=images(covered[:length, ..., None].expand(
            -1, -1, -1, 3)), prompt=self.prompt, height=size[0], width=size[1], num_frames=length,
            num_inference_steps=self.steps, guidance_scale=self.guidance, output_type="pt",
            generator=torch.Generator().manual_seed(self.seed)).frames[0]
        generated = torch.as_tensor(result).float()  # [T, 3, h, w] in [0, 1]
        generated = F.interpolate(generated, size=(height, width), mode="bilinear", align_corners=False)
        generated = generated.permute(0, 2, 3, 1).cpu()
        if length < count:
            generated = torch.cat([generated, generated[-1:].expand(count - length, -1, -1, -1)])
        return torch.where(covered[..., None] > 0, generated, frames)
