"""The feature models behind VBench's model-backed dimensions, loaded through transformers without a network.

A model is named by a local folder or a hub id already in the hub cache (`local_files_only`: nothing is
downloaded); transformers reads safetensors, or .bin through torch.load(weights_only=True). The LAION aesthetic head
is a 768 -> 1 linear layer read from a .safetensors or .pth file (weights_only). A model that was asked for and
cannot be loaded raises ModelUnavailable; nothing falls back to another model without saying so: every score
records the model that made it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .vbench import middle_frames

DINO_ID = "facebook/dino-vitb16"  # VBench: DINO ViT-B/16 (torch hub dino_vitb16)
CLIP_ID = "openai/clip-vit-large-patch14"  # VBench: CLIP ViT-L/14
AESTHETIC_FILE = "sa_0_4_vit_l_14_linear.pth"  # LAION aesthetic predictor head for ViT-L/14
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class ModelUnavailable(RuntimeError):
    """A requested evaluation model could not be loaded (not in a local folder or the hub cache)."""


def _from_pretrained(cls, name: str, what: str, option: str, **kwargs):
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelUnavailable(
            f"{what} {name!r} is not available offline ({str(error).splitlines()[0]}); download it once into the hub "
            f"cache or a folder and pass {option} FOLDER") from None


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size) rule: the shorter side becomes `size`, the longer one is truncated, not rounded."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _resize_shorter(frames: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, h, w] in [0, 1], the shorter side `size`: VBench's torchvision Resize on
    uint8 tensors (no antialiasing, the result rounded back to 8 bits)."""
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    new = resized_size(*images.shape[-2:], size)
    if new != tuple(images.shape[-2:]):
        images = F.interpolate(images, size=new, mode=mode, align_corners=False, antialias=False)
        images = images.clamp(0, 255).round()
    return images / 255.0


def clip_pixels(frames: np.ndarray, size: int = 224) -> torch.Tensor:
    """VBench's clip_transform on uint8 frames [T, H, W, 3] -> [T, 3, size, size]: bicubic resize of the shorter
    side, centre crop (offsets rounded half to even, as torchvision's CenterCrop), CLIP's normalisation."""
    images = _resize_shorter(frames, size, "bicubic")
    height, width = images.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return _normalise(images[..., top:top + size, left:left + size], CLIP_MEAN, CLIP_STD)


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class DinoFeatures:
    """Per-frame DINO features (the CLS token) for subject consistency; VBench's transform: shorter side 224."""

    def __init__(self, name: str = DINO_ID, device: str | torch.device = "cpu", size: int = 224):
        from transformers import ViTModel
        self.name, self.device, self.size = name, torch.device(device), size
        self.model = _from_pretrained(ViTModel, name, "DINO model", "--dino", add_pooling_layer=False)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, batch: int = 16) -> torch.Tensor:
        images = _normalise(_resize_shorter(frames, self.size, "bilinear"), IMAGENET_MEAN, IMAGENET_STD)
        out = [self.model(pixel_values=chunk.to(self.device), interpolate_pos_encoding=True).last_hidden_state[:, 0]
               for chunk in images.split(batch)]
        return torch.cat(out).float().cpu()


class ClipFeatures:
    """CLIP image and text features (aesthetic quality, and text alignment without ViCLIP); VBench's transform:
    shorter side 224 (bicubic), centre crop 224."""

    def __init__(self, name: str = CLIP_ID, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer, CLIPModel
        self.name, self.device = name, torch.device(device)
        self.model = _from_pretrained(CLIPModel, name, "CLIP model", "--clip").to(self.device).eval()
        self.tokenizer = _from_pretrained(AutoTokenizer, name, "CLIP tokenizer", "--clip")
        self.size = int(self.model.config.vision_config.image_size)

    @staticmethod
    def _pooled(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers 4.x / 5.x

    @torch.no_grad()
    def images(self, frames: np.ndarray, batch: int = 16) -> torch.Tensor:
        images = clip_pixels(frames, self.size)
        out = [self._pooled(self.model.get_image_features(pixel_values=chunk.to(self.device)))
               for chunk in images.split(batch)]
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer([prompt], padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return self._pooled(self.model.get_text_features(**tokens))[0].float().cpu()

    def video(self, frames: np.ndarray) -> torch.Tensor:
        """Per-frame features of VBench's 8 middle frames (text alignment averages them)."""
        return self.images(frames[middle_frames(len(frames))])


def load_aesthetic_head(path: str | os.PathLike, dim: int = 768) -> torch.nn.Linear:
    """The LAION linear aesthetic head from a .safetensors or .pth state dict (weight [1, dim], bias [1])."""
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"aesthetic head {path} not found; get {AESTHETIC_FILE} (LAION aesthetic-predictor) "
                               f"and pass --aesthetic FILE")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a pickle that is more than tensors is refused, never executed
            raise ModelUnavailable(f"aesthetic head {path} is not a plain state dict ({error})") from None
    head = torch.nn.Linear(dim, 1)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, AttributeError) as error:
        raise ModelUnavailable(f"aesthetic head {path} does not hold a {dim} -> 1 linear layer ({error})") from None
    return head.eval()
