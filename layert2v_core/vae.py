"""The Wan2.1 causal 3D video VAE: streaming encode / decode, optional spatial tiling, and its loader.

A video [B, 3, 1 + 4k, H, W] in [-1, 1] maps to a latent [B, 16, 1 + k, H/8, W/8]. Every convolution is causal in
time (padded at the front only), so the model runs as a stream: encode feeds frame chunks 1, 4, 4, ... and decode one
latent frame at a time, each convolution keeping the last two frames of its input in a per-call cache. Working
memory therefore depends on the frame size, not on the video length.

Module and parameter names follow the original Wan2.1 code, so `Wan2.1_VAE.pth` and ComfyUI's
`wan_2.1_vae.safetensors` load as they are; the diffusers `AutoencoderKLWan` layout is renamed on load.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vae_tiling import Tiling, as_tiling, tiled_map
from .weights import (CheckpointError, assign_weights, is_side_tensor, open_weights, read_tensor,
                      save_weights_atomic)

STATS_KEY = "layert2v.latent_stats"

# Per-channel statistics of the real Wan2.1 latent; the DiT works on (mu - mean) / std.
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
TIME_STRIDE = 4
SPACE_STRIDE = 8
CACHE_FRAMES = 2  # a kernel-3 causal conv needs the two frames before the current chunk

# A per-call cache: each streaming module stores what it needs from the previous chunk under its own key.
StreamCache = dict


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------
def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride) -> torch.Tensor:
    """An unpadded 3D convolution. On CPU it goes straight to oneDNN: PyTorch's own choice falls back to its
    im2col kernel (4-5x slower) whenever batch x channels x frames x rows is small, as for narrow VAEs."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.enabled \
            and torch.backends.mkldnn.is_available() and x.dtype == weight.dtype:
        return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, (0, 0, 0), stride, (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, stride)


class CausalConv3d(nn.Conv3d):
    """Conv3d zero-padded in time at the front only; with a cache it continues the previous chunk seamlessly."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0)
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        self.front_pad = 2 * pad_t
        self.space_pad = (pad_w, pad_w, pad_h, pad_h)

    def pad(self, x: torch.Tensor, cache: StreamCache | None = None) -> tuple[torch.Tensor, int]:
        """The input the kernel slides over, and the first kernel tap (in time) to apply. Cached frames of the
        previous chunk replace front zeros. A chunk with a single output frame (the first frame of a stream) skips
        the taps that would fall on front zeros instead of multiplying zeros: a third of the work of a 3-tap conv."""
        front = self.front_pad
        if cache is not None and front > 0:
            previous = cache.get(self)
            if previous is not None:
                x = torch.cat([previous, x], dim=2)
                front -= previous.shape[2]
            cache[self] = x[:, :, -CACHE_FRAMES:].clone()  # clone: a view would keep the whole chunk alive
        first_tap = 0
        if front > 0 and x.shape[2] + front == self.kernel_size[0]:
            first_tap, front = front, 0
        if front == 0 and not any(self.space_pad):
            return x, first_tap
        return F.pad(x, (*self.space_pad, front, 0)), first_tap

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return conv3d(x, weight, bias, self.stride)

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        x, first_tap = self.pad(x, cache)
        return self._conv_forward(x, self.weight[:, :, first_tap:], self.bias)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned per-channel `gamma`."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same as F.normalize(x, dim=1) * scale * gamma, with two full-size passes instead of three.
        inv_norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
        return (x * inv_norm) * (self.gamma * self.scale)


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x spatial upsampling, computed in fp32 (bf16 nearest is not supported everywhere).
    Resample holds it ahead of its conv (the checkpoint's resample.1.* keys) but runs both as `upsample2x_conv`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


def _merge_taps(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """A 3-tap kernel axis as the 2 taps one output phase of a 2x nearest upsampling sees: the even outputs read
    input pixels (i-1, i, i), the odd ones (i, i, i+1), so the taps landing on the same pixel add up."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack((w0, w1 + w2) if phase == 0 else (w0 + w1, w2), dim)


def upsample2x_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(nearest_upsample_2x(x), weight [O, I, 3, 3], bias, padding=1), computed as one 2x2 conv per output
    pixel phase on x itself: 16 multiply-adds per output and input channel instead of 36, and no upsampled copy."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    phases = []
    for a in (0, 1):
        rows = _merge_taps(weight, 2, a)
        for b in (0, 1):
            kernel = _merge_taps(rows, 3, b).contiguous()
            phases.append(F.conv2d(padded[:, :, a:a + h + 1, b:b + w + 1], kernel, bias))
    out = torch.stack(phases, 2).unflatten(2, (2, 2))  # [n, O, row phase, column phase, h, w]
    return out.permute(0, 1, 4, 2, 5, 3).reshape(n, -1, 2 * h, 2 * w)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> dropout -> conv, plus a (1x1x1 conv) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        # Index layout (0 norm, 2 conv, 3 norm, 6 conv) is the checkpoint's: residual.N.* keys.
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        norm1, act1, conv1, norm2, act2, dropout, conv2 = self.residual
        h = conv1(act1(norm1(x)), cache)
        h = conv2(dropout(act2(norm2(h))), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (frames never attend to each other)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # starts as the identity map, as in the original

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 3, c, h * w).transpose(2, 3)  # [bt, 3, hw, c]
        q, k, v = qkv.unsqueeze(2).unbind(1)  # each [bt, 1, hw, c]
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """2x spatial up/down-sampling per frame, with an optional 2x temporal step (the '3d' modes)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        if self.mode.startswith("upsample"):
            conv = self.resample[1]
            y = upsample2x_conv(frames, conv.weight, conv.bias)
        else:
            y = self.resample(frames)
        x = y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        # The first latent frame stands for one video frame, so it skips the temporal upsample.
        if self not in cache:
            cache[self] = True
            return x
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache)  # [b, 2c, t, h, w]: two output frames per input frame, stacked on channels
        return y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _halve_frames(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        # Stride-2 kernel-3 conv over the frame sequence; the first frame of the video passes through on its own.
        previous = cache.get(self)
        cache[self] = x[:, :, -1:].clone()
        if previous is None:
            return x
        return self.time_conv(torch.cat([previous, x], dim=2))


# ---------------------------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------------------------
class Encoder3d(nn.Module):
    def __init__(self, dim: int, out_channels: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temporal_downsample: Sequence[bool], dropout: float = 0.0):
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        top = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(top, top, dropout), AttentionBlock(top),
                                    ResidualBlock(top, top, dropout))
        self.head = nn.Sequential(RMSNorm(top), nn.SiLU(), CausalConv3d(top, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        norm, act, conv = self.head
        return conv(act(norm(x)), cache)


class Decoder3d(nn.Module):
    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temporal_upsample: Sequence[bool], dropout: float = 0.0):
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0], dropout))
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every upsample halves the channels it hands to the next stage
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        norm, act, conv = self.head
        return conv(act(norm(x)), cache)


def stream_encode(encoder: Encoder3d, quant_conv: nn.Module, video: torch.Tensor, z_dim: int) -> torch.Tensor:
    """The first `z_dim` channels of the posterior (z_dim = the latent width gives mu) [B, z_dim, 1 + (T-1)/4,
    H/8, W/8] (fp32), feeding the encoder frame chunks 1, 4, 4, ..."""
    weight = quant_conv.weight
    b, _, t, h, w = video.shape
    mu = torch.empty(b, z_dim, 1 + (t - 1) // TIME_STRIDE, h // SPACE_STRIDE, w // SPACE_STRIDE,
                     dtype=torch.float32, device=weight.device)
    cache: StreamCache = {}
    for i in range(mu.shape[2]):
        start, stop = (0, 1) if i == 0 else (1 + TIME_STRIDE * (i - 1), 1 + TIME_STRIDE * i)
        chunk = video[:, :, start:stop].to(device=weight.device, dtype=weight.dtype)
        mu[:, :, i:i + 1] = quant_conv(encoder(chunk, cache))[:, :z_dim]
    return mu


def stream_decode(decoder: Decoder3d, post_quant_conv: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Video [B, 3, 1 + 4(T'-1), 8H', 8W'] (fp32, not clamped) from raw latents, one latent frame at a time."""
    weight = post_quant_conv.weight
    b, _, t, h, w = z.shape
    x = post_quant_conv(z.to(device=weight.device, dtype=weight.dtype))
    video = torch.empty(b, 3, 1 + TIME_STRIDE * (t - 1), h * SPACE_STRIDE, w * SPACE_STRIDE,
                        dtype=torch.float32, device=weight.device)
    cache: StreamCache = {}
    for i in range(t):
        frames = decoder(x[:, :, i:i + 1], cache)
        start = 0 if i == 0 else 1 + TIME_STRIDE * (i - 1)
        video[:, :, start:start + frames.shape[2]] = frames
    return video


# ---------------------------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAEConfig:
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    # Latent normalisation; None means Wan2.1's statistics for z_dim 16 and mean 0 / std 1 otherwise.
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError("temporal_downsample needs one flag per downsampling stage (len(dim_mult) - 1)")
        if 2 ** sum(self.temporal_downsample) != TIME_STRIDE:
            raise ValueError(f"the Wan2.1 VAE downsamples time by {TIME_STRIDE}; got flags {self.temporal_downsample}")
        if 2 ** (len(self.dim_mult) - 1) != SPACE_STRIDE:
            raise ValueError(f"the Wan2.1 VAE downsamples space by {SPACE_STRIDE}: dim_mult needs 4 entries")

    @property
    def mean(self) -> tuple[float, ...]:
        if self.latent_mean is not None:
            return self.latent_mean
        return WAN21_LATENT_MEAN if self.z_dim == 16 else (0.0,) * self.z_dim

    @property
    def std(self) -> tuple[float, ...]:
        if self.latent_std is not None:
            return self.latent_std
        return WAN21_LATENT_STD if self.z_dim == 16 else (1.0,) * self.z_dim


class WanVAE(nn.Module):
    """Wan2.1 video VAE. `encode` gives the normalised latent, `decode` a video in [-1, 1]; both stream over time.

    `tile` (encode and decode) is None for the exact untiled result, or a `Tiling(size, overlap)` / `(size, overlap)`
    in pixels (multiples of 8): the frame is processed in overlapping square tiles blended linearly across the
    overlap, which bounds memory by the tile size. Results are float32 on the model's device.
    """

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder3d(c.dim, 2 * c.z_dim, c.dim_mult, c.num_res_blocks, c.temporal_downsample)
        self.conv1 = CausalConv3d(2 * c.z_dim, 2 * c.z_dim, 1)  # -> [mu | log_var]
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)  # post-quant conv
        self.decoder = Decoder3d(c.dim, c.z_dim, c.dim_mult, c.num_res_blocks, tuple(reversed(c.temporal_downsample)))

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def _stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(self.config.std, dtype=torch.float32, device=device).view(shape)
        return mean, std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(mu.device)
        return (mu - mean) / std

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent.device)
        return latent.float() * std + mean

    def encode_mu(self, video: torch.Tensor, *, tile: Tiling | tuple[int, int] | None = None) -> torch.Tensor:
        """Raw latent mean mu (before normalisation)."""
        check_video(video)
        tiling = as_tiling(tile)
        run = lambda v: stream_encode(self.encoder, self.conv1, v, self.z_dim)
        if tiling is None:
            return run(video)
        return tiled_map(run, video, tiling, factor_in=SPACE_STRIDE, factor_out=1)

    def encode_moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (mu, log_var) of the posterior, for training the VAE itself (untiled)."""
        check_video(video)
        moments = stream_encode(self.encoder, self.conv1, video, 2 * self.z_dim)
        return moments[:, :self.z_dim], moments[:, self.z_dim:]

    def encode(self, video: torch.Tensor, *, tile: Tiling | tuple[int, int] | None = None) -> torch.Tensor:
        """[B, 3, 4k+1, H, W] in [-1, 1] -> normalised latent [B, z, k+1, H/8, W/8]."""
        return self.normalize(self.encode_mu(video, tile=tile))

    def decode(self, latent: torch.Tensor, *, tile: Tiling | tuple[int, int] | None = None,
               clamp: bool = True) -> torch.Tensor:
        """Normalised latent [B, z, T', H', W'] -> video [B, 3, 4(T'-1)+1, 8H', 8W'] in [-1, 1]."""
        check_latent(latent, self.z_dim)
        tiling = as_tiling(tile)
        z = self.denormalize(latent)
        run = lambda part: stream_decode(self.decoder, self.conv2, part)
        video = run(z) if tiling is None else tiled_map(run, z, tiling, factor_in=1, factor_out=SPACE_STRIDE)
        return video.clamp_(-1, 1) if clamp else video


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------
def _nearest(value: int, valid: Callable[[int], bool], lo: int) -> str:
    below = next((v for v in range(value, lo - 1, -1) if valid(v)), None)
    above = next(v for v in range(value, value + 64) if valid(v))
    return " or ".join(str(v) for v in dict.fromkeys(x for x in (below, above) if x is not None))


def check_video(video: torch.Tensor) -> None:
    """Raise ValueError unless video is [B, 3, 4k+1, H, W] with H, W multiples of 8."""
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"the VAE encodes a video tensor [batch, 3, frames, height, width] in [-1, 1], got {shape}")
    _, _, t, h, w = video.shape
    problems = []
    if t % TIME_STRIDE != 1:
        problems.append(f"{t} frames (must be 4k+1; nearest valid: "
                        f"{_nearest(t, lambda v: v % TIME_STRIDE == 1, 1)})")
    for name, size in (("height", h), ("width", w)):
        if size % SPACE_STRIDE or size == 0:
            problems.append(f"{name} {size} (must be a multiple of 8, and of 16 for the DiT; nearest valid: "
                            f"{_nearest(size, lambda v: v > 0 and v % SPACE_STRIDE == 0, 8)})")
    if problems:
        raise ValueError("cannot encode this video: " + "; ".join(problems))
    if not video.is_floating_point():
        raise ValueError(f"the video must be a float tensor in [-1, 1], got dtype {video.dtype}")


def check_latent(latent: torch.Tensor, z_dim: int) -> None:
    if not isinstance(latent, torch.Tensor) or latent.dim() != 5 or latent.shape[1] != z_dim:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise ValueError(f"the VAE decodes a latent [batch, {z_dim}, frames, height, width], got {shape}")
    if min(latent.shape[2:]) < 1:
        raise ValueError(f"the latent has an empty dimension: {tuple(latent.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
_WAN_MARKER = "decoder.middle.0.residual.0.gamma"
_DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"
_WAN22_MARKERS = ("decoder.upsamples.0.upsamples.0.residual.2.weight", "decoder.up_blocks.0.avg_shortcut")


def frozen_vae_dtype(device: str | torch.device) -> torch.dtype | None:
    """The dtype a frozen VAE computes in: float32 on CPU, where half-precision convolutions are many times slower
    (the demo VAE's fp16 file encodes a 48x48x9 clip in 0.53 s of CPU, 0.06 s in fp32), else the file's own."""
    return torch.float32 if torch.device(device).type == "cpu" else None


def load_vae(path: str | os.PathLike | Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
             device="cpu") -> WanVAE:
    """Load a Wan2.1 VAE from `Wan2.1_VAE.pth`, ComfyUI's `wan_2.1_vae.safetensors`, or a diffusers
    `AutoencoderKLWan` file / folder, or from such a VAE's tensors themselves (the state dict of ComfyUI's loaded
    VAE). The architecture is read from the weights; dtype None keeps the file's."""
    given = isinstance(path, Mapping)
    source = path if given else open_weights(path)
    path = "the given VAE tensors" if given else path
    fmt, names = _detect_layout(source, path)  # names: original-layout key -> file key
    config = infer_vae_config({k: (lambda sk=sk: source[sk]) for k, sk in names.items()}, path, fmt)
    # A VAE of our own carries its latent statistics.
    stats = json.loads(getattr(source, "metadata", {}).get(STATS_KEY, "{}"))
    if stats:
        config = dataclasses.replace(config, latent_mean=tuple(stats["latent_mean"]),
                                     latent_std=tuple(stats["latent_std"]))
    with torch.device("meta"):
        model = WanVAE(config)
    readers = {k: (lambda sk=sk: read_tensor(source, sk, dtype)) for k, sk in names.items()}
    assign_weights(model, readers, dtype=dtype, device=device, fmt=fmt, path=path)
    return model.eval().requires_grad_(False)


def _detect_layout(source: Mapping[str, torch.Tensor], path) -> tuple[str, dict[str, str]]:
    keys = [k for k in source if not is_side_tensor(k)]
    if any(k.endswith(m) for k in keys for m in _WAN22_MARKERS):
        raise CheckpointError(f"{path} is a Wan2.2 VAE (48-channel latent); LayerT2V runs on Wan2.1-T2V-1.3B and "
                              f"needs the Wan2.1 VAE (Wan2.1_VAE.pth or wan_2.1_vae.safetensors)")
    for marker, fmt in ((_WAN_MARKER, "Wan2.1/ComfyUI"), (_DIFFUSERS_MARKER, "diffusers AutoencoderKLWan")):
        hit = next((k for k in keys if k.endswith(marker)), None)
        if hit is None:
            continue
        prefix = hit[: -len(marker)]  # e.g. "first_stage_model." inside a bundled checkpoint
        own = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
        if fmt.startswith("diffusers"):
            own = _rename_diffusers(own)
        return fmt, own
    raise CheckpointError(f"{path} is not a Wan2.1 VAE: found neither {_WAN_MARKER!r} (Wan2.1 / ComfyUI layout) nor "
                          f"{_DIFFUSERS_MARKER!r} (diffusers layout) among its {len(keys)} tensors; "
                          f"pick Wan2.1_VAE.pth or wan_2.1_vae.safetensors")


_DIFFUSERS_PREFIXES = (
    ("quant_conv.", "conv1."), ("post_quant_conv.", "conv2."),
    ("encoder.conv_in.", "encoder.conv1."), ("decoder.conv_in.", "decoder.conv1."),
    ("encoder.norm_out.", "encoder.head.0."), ("encoder.conv_out.", "encoder.head.2."),
    ("decoder.norm_out.", "decoder.head.0."), ("decoder.conv_out.", "decoder.head.2."),
    ("encoder.down_blocks.", "encoder.downsamples."),
)
_DIFFUSERS_MIDDLE = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}
_DIFFUSERS_RESIDUAL = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                       "conv_shortcut": "shortcut"}


def _rename_diffusers(names: Mapping[str, str]) -> dict[str, str]:
    """diffusers AutoencoderKLWan key -> original Wan key (diffusers nests the decoder stages; Wan keeps them flat)."""
    up_resnets = {int(m.group(1)) for k in names if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))}
    stage_len = len(up_resnets) + 1  # residual blocks + one upsampler per stage
    out = {}
    for key, file_key in names.items():
        new = key
        for old, repl in _DIFFUSERS_PREFIXES:
            if new.startswith(old):
                new = repl + new[len(old):]
                break
        new = re.sub(r"^(encoder|decoder)\.mid_block\.(resnets\.[01]|attentions\.0)\.",
                     lambda m: f"{m.group(1)}.middle.{_DIFFUSERS_MIDDLE[m.group(2)]}.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.upsamples.{int(m.group(1)) * stage_len + int(m.group(2))}.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.upsamples.{int(m.group(1)) * stage_len + stage_len - 1}.", new)
        new = re.sub(r"^((?:encoder|decoder)\.(?:downsamples|upsamples|middle)\.\d+\.)"
                     r"(norm1|conv1|norm2|conv2|conv_shortcut)\.",
                     lambda m: f"{m.group(1)}{_DIFFUSERS_RESIDUAL[m.group(2)]}.", new)
        out[new] = file_key
    return out


def save_vae(vae: WanVAE, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write a VAE in Wan2.1's original key layout; its latent mean/std go in the metadata."""
    tensors = {k: (v.to(dtype) if dtype is not None else v) for k, v in vae.state_dict().items()}
    stats = {"latent_mean": list(vae.config.mean), "latent_std": list(vae.config.std)}
    save_weights_atomic(tensors, path, {STATS_KEY: json.dumps(stats)})


def infer_vae_config(tensors: Mapping[str, Callable[[], torch.Tensor]], path="<weights>",
                     fmt: str = "Wan2.1") -> VAEConfig:
    """Read dim / z_dim / dim_mult / num_res_blocks / temporal downsampling from original-layout keys."""
    need = ("encoder.conv1.weight", "conv2.weight")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise CheckpointError(f"{path}: {fmt} layout but {missing} are missing; the file is partial or not a VAE")
    dim = tensors["encoder.conv1.weight"]().shape[0]
    z_dim = tensors["conv2.weight"]().shape[0]
    stages: list[list[int]] = [[]]  # output channels of each stage's residual blocks
    temporal: list[bool] = []
    k = 0
    while True:
        base = f"encoder.downsamples.{k}."
        if base + "residual.6.weight" in tensors:
            stages[-1].append(tensors[base + "residual.6.weight"]().shape[0])
        elif base + "resample.1.weight" in tensors:
            temporal.append(base + "time_conv.weight" in tensors)
            stages.append([])
        elif base + "norm.gamma" in tensors:
            raise CheckpointError(f"{path}: attention inside the encoder stages is not part of the Wan2.1 VAE")
        else:
            break
        k += 1
    if not stages[0] or any(len(s) != len(stages[0]) for s in stages):
        raise CheckpointError(f"{path}: {fmt} layout but the encoder stages are irregular "
                              f"({[len(s) for s in stages]} residual blocks); not a Wan2.1 VAE")
    try:
        return VAEConfig(dim=dim, z_dim=z_dim, dim_mult=tuple(s[-1] // dim for s in stages),
                         num_res_blocks=len(stages[0]), temporal_downsample=tuple(temporal))
    except ValueError as err:
        raise CheckpointError(f"{path}: {fmt} layout with an unsupported architecture: {err}") from None
