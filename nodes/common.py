"""What the LayerT2V nodes share: custom type names, the objects they pass, the LATENT layout, readable errors."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from layert2v_core.layers import LayerSpec
from layert2v_core.pipeline import SPATIAL_STRIDE, TEMPORAL_STRIDE

CATEGORY = "LayerT2V"
MODEL = "LAYERT2V_MODEL"
VAE = "LAYERT2V_VAE"
TEXT_ENCODER = "LAYERT2V_TEXT_ENCODER"
CONDITIONING = "LAYERT2V_CONDITIONING"
LAYERS = "LAYERT2V_LAYERS"
LATENT_KEY = "layert2v"  # our entry in a LATENT dict; core nodes pass it through untouched

OFFLOAD_CHOICES = ("keep on GPU", "offload between runs", "block by block")
DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class LayerT2VInputError(ValueError):
    """A problem with what the graph gave a LayerT2V node, worded for the person who built the graph."""


@contextlib.contextmanager
def readable_errors(node: str) -> Iterator[None]:
    """Turn the core's input errors into one message naming the node, without the core's stack behind it."""
    try:
        yield
    except LayerT2VInputError:
        raise
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise LayerT2VInputError(f"{node}: {error}") from None


@dataclass
class LoadedModel:
    dit: torch.nn.Module
    offload: str
    name: str
    adapter: Path | None = None  # the adapter file or official checkpoint folder it was loaded with


@dataclass
class LoadedVAE:
    vae: torch.nn.Module
    mask_vae: torch.nn.Module
    tile: object | None  # a layert2v_core Tiling or None


@dataclass
class LayeredConditioning:
    num_foregrounds: int
    text: object  # layert2v_core.text.LayeredContext


@dataclass
class LayerInfo:
    """What our LATENT entry records: the layout and, for layer-conditioned generation, the kept layers."""

    num_foregrounds: int
    frames: int
    kept: tuple[str, ...] = ()
    strength: float = 0.0

    def spec(self, policy: str = "paper") -> LayerSpec:
        return LayerSpec(self.num_foregrounds, policy)


def make_latent(samples: torch.Tensor, info: LayerInfo) -> dict:
    return {"samples": samples, LATENT_KEY: {"num_foregrounds": info.num_foregrounds, "frames": info.frames,
                                             "kept": list(info.kept), "strength": info.strength}}


def read_latent(latent: dict, node: str) -> tuple[torch.Tensor, LayerInfo]:
    """The samples and our layout record; a clear error for a LATENT that did not come from a LayerT2V node."""
    if not isinstance(latent, dict) or LATENT_KEY not in latent or "samples" not in latent:
        raise LayerT2VInputError(f"{node}: this LATENT is not a LayerT2V layered latent; start from 'Empty Layered "
                                 f"Latent (LayerT2V)' or 'Encode Layers (LayerT2V)'")
    entry = latent[LATENT_KEY]
    samples = latent["samples"]
    info = LayerInfo(int(entry["num_foregrounds"]), int(entry["frames"]), tuple(entry.get("kept", ())),
                     float(entry.get("strength", 0.0)))
    spec = info.spec()
    expected_time = spec.num_segments * latent_frames(info.frames)
    if samples.dim() != 5 or samples.shape[2] != expected_time:
        raise LayerT2VInputError(f"{node}: the layered latent has shape {tuple(samples.shape)}, but "
                                 f"{info.num_foregrounds} foreground(s) x {info.frames} frames needs "
                                 f"[batch, 16, {expected_time}, H/{SPATIAL_STRIDE}, W/{SPATIAL_STRIDE}]")
    return samples, info


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL_STRIDE + 1


def video_to_image(video: torch.Tensor) -> torch.Tensor:
    """[C, T, H, W] in [0, 1] -> ComfyUI IMAGE [T, H, W, C]."""
    return video.permute(1, 2, 3, 0).contiguous().float().cpu()


def image_to_video(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [T, H, W, C] -> [C, T, H, W]."""
    return image.permute(3, 0, 1, 2).contiguous().float()


def alpha_to_mask(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha [1, T, H, W] (1 = opaque) -> ComfyUI MASK [T, H, W] as JoinImageWithAlpha reads it: 1 - alpha."""
    return (1.0 - alpha[0]).contiguous().float().cpu()


def mask_to_alpha(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK [T, H, W] or [H, W] (LoadImage's 1 - alpha convention) -> alpha [1, T, H, W]."""
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    return (1.0 - mask.float()).unsqueeze(0)
