"""Model backends through maintained libraries, imported only when chosen: SAM2 video tracking (transformers) for
matting and Wan2.1 VACE inpainting (diffusers) for removal under a moving camera.

    Sam2VideoMatter.from_pretrained("facebook/sam2.1-hiera-large")                     a transformers SAM2 video folder
    VaceRemover.from_pretrained("Wan-AI/Wan2.1-VACE-1.3B-diffusers")                   a diffusers WanVACEPipeline folder
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# ImageNet statistics, what SAM2's video processor normalises with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require(module: str, backend: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"the {backend} backend needs {module}: pip install {module}") from None


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

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """[T, 3, S, S] resized and normalised as Sam2VideoProcessor does (done here: its processor needs
        torchvision)."""
        video = F.interpolate(frames.permute(0, 3, 1, 2), size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((video - mean) / std).to(self.device)

    @torch.inference_mode()
    def matte(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        height, width = frames.shape[1:3]
        session = Sam2VideoInferenceSession(video=self._pixels(frames), video_height=height, video_width=width,
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
