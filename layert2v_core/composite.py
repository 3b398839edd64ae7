"""Alpha compositing of LayerT2V layers.

Convention: channel-first video tensors [..., C, T, H, W] (e.g. [B, 3, T, H, W] or [3, T, H, W]) with values in
[0, 1]; alpha mattes [..., 1, T, H, W] in [0, 1], 1 = opaque foreground. Every argument may also broadcast (a
background can be one still frame [3, 1, H, W] or a solid colour [3, 1, 1, 1]).

Straight (unassociated) colour is what a compositor expects in files; premultiplied (associated) colour is what
LayerT2V generates (fg = full * alpha) and what "over" needs. Each function says which it takes.
Layer order: foreground 1 sits directly on the background and foreground N on top, as the layers are numbered.
"""
from __future__ import annotations

from typing import Sequence

import torch

# Below this alpha a pixel carries no usable colour (it is 0 in 8-bit files), so unpremultiply returns black there.
MIN_ALPHA = 1.0 / 512.0


def _check_layer(name: str, video: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(video, torch.Tensor) or video.dim() < 4:
        raise ValueError(f"{name} must be a tensor [..., C, T, H, W] (channel-first video), got "
                         f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
    if channels is not None and video.shape[-4] != channels:
        raise ValueError(f"{name} must have {channels} channel(s) at dim -4 ([..., C, T, H, W]), got shape "
                         f"{tuple(video.shape)}")


def _check_stack(background: torch.Tensor, foregrounds: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor]):
    _check_layer("background", background)
    if isinstance(foregrounds, torch.Tensor) or isinstance(alphas, torch.Tensor):
        raise TypeError("pass foregrounds and alphas as lists (one tensor per layer, bottom first)")
    if len(foregrounds) != len(alphas):
        raise ValueError(f"got {len(foregrounds)} foreground(s) but {len(alphas)} alpha matte(s); give one matte "
                         f"per foreground, in the same order")
    shapes = [background.shape]
    for i, (fg, alpha) in enumerate(zip(foregrounds, alphas), start=1):
        _check_layer(f"foreground {i}", fg, background.shape[-4])
        _check_layer(f"alpha {i}", alpha, 1)
        shapes += [fg.shape, alpha.shape]
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(f"layer shapes do not broadcast together: {[tuple(s) for s in shapes]}") from None


def premultiply(straight: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight colour -> premultiplied colour: rgb * alpha."""
    _check_layer("straight colour", straight)
    _check_layer("alpha", alpha, 1)
    return straight * alpha


def unpremultiply(premultiplied: torch.Tensor, alpha: torch.Tensor, min_alpha: float = MIN_ALPHA) -> torch.Tensor:
    """Premultiplied colour -> straight colour in [0, 1]; 0 where alpha < min_alpha (no colour to recover there)."""
    _check_layer("premultiplied colour", premultiplied)
    _check_layer("alpha", alpha, 1)
    visible = alpha >= min_alpha
    safe_alpha = torch.where(visible, alpha, torch.ones_like(alpha))
    straight = torch.where(visible, premultiplied / safe_alpha, torch.zeros_like(premultiplied))
    return straight.clamp(0.0, 1.0)


def recompose(background: torch.Tensor, foregrounds_premultiplied: Sequence[torch.Tensor],
              alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """The full video from its layers: result = fg_i + result * (1 - alpha_i), i = 1 (bottom) .. N (top).

    Takes premultiplied foregrounds (as LayerT2V generates them) and an opaque background.
    """
    _check_stack(background, foregrounds_premultiplied, alphas)
    result = background
    for fg, alpha in zip(foregrounds_premultiplied, alphas):
        result = fg + result * (1 - alpha)
    return result


def over_background(background: torch.Tensor, foregrounds_straight: Sequence[torch.Tensor],
                    alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Put straight-alpha foregrounds (as read from RGBA files) over a new background, 1 at the bottom, N on top."""
    _check_stack(background, foregrounds_straight, alphas)
    return recompose(background, [fg * a for fg, a in zip(foregrounds_straight, alphas)], alphas)


def consistency_error(full: torch.Tensor, background: torch.Tensor,
                      foregrounds_premultiplied: Sequence[torch.Tensor],
                      alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Layer-consistency error mean|recompose(background, fgs, alphas) - full| (0-d tensor, in [0, 1] units).

    Foregrounds premultiplied, as generated; a perfectly consistent decomposition scores 0.
    """
    _check_layer("full", full)
    recomposed = recompose(background, foregrounds_premultiplied, alphas)
    try:
        torch.broadcast_shapes(recomposed.shape, full.shape)
    except RuntimeError:
        raise ValueError(f"full video {tuple(full.shape)} and recomposed layers {tuple(recomposed.shape)} differ "
                         f"in shape") from None
    return (recomposed.float() - full.float()).abs().mean()


def fit_background(background: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """A new background [C, T_b, H_b, W_b] made to cover [C, frames, height, width].

    One frame (a still image) is held for every frame; T_b == frames is used as is; frame sizes are resized
    bilinearly to the layers' size. Any other frame count is an error (trim or extend the clip first).
    """
    _check_layer("background", background)
    if background.dim() != 4:
        raise ValueError(f"background must be one video [C, T, H, W], got shape {tuple(background.shape)}")
    count = background.shape[1]
    if count not in (1, frames):
        raise ValueError(f"the new background has {count} frames but the layers have {frames}; give one image "
                         f"(held for every frame) or exactly {frames} frames")
    if background.shape[-2:] != (height, width):
        background = torch.nn.functional.interpolate(background.float(), size=(height, width), mode="bilinear",
                                                     align_corners=False).clamp(0.0, 1.0)
    return background.expand(-1, frames, -1, -1)


def to_straight_rgba(foreground_premultiplied: torch.Tensor, alpha: torch.Tensor,
                     min_alpha: float = MIN_ALPHA) -> torch.Tensor:
    """A generated layer as straight RGBA [..., 4, T, H, W], ready for an alpha-capable video file."""
    straight = unpremultiply(foreground_premultiplied, alpha, min_alpha)
    return torch.cat([straight, alpha.clamp(0.0, 1.0).expand_as(straight[..., :1, :, :, :])], dim=-4)
