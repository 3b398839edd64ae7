"""The dedicated MaskVAE of the official 'mask-vae-project' / 'mask-vae-joint' modes (`mask_vae.pt`).

A small convolutional VAE of its own for one-channel mattes in [-1, 1], with the Wan VAE's strides (time 4, space
8) so its latent has the DiT's mask segment shape:

  encoder  conv_in 1->h, one stage per dim_mult entry (num_res_blocks ResBlocks h*m, then a stride-2 conv; the
           first stage keeps time), a residual channel MLP, then GroupNorm, SiLU, conv -> latent channels
  decoder  conv_in latent->h*m_last, the residual channel MLP, one stage per entry in reverse (trilinear x2 upsample
           + conv, num_res_blocks+1 ResBlocks; the last stage keeps time), GroupNorm, SiLU, conv -> 1, trilinear
           resize to the video (4T' frames come out; the video has 4(T'-1)+1)

GroupNorms normalise each frame on its own. The file is {encoder, decoder, config}; config holds hidden_channels,
latent_channels, dim_mult and temporal_downsample; the residual block count, the MLP's ratio and depth and the
GroupNorm switch are read from the tensors (the official loader takes its defaults 2, 4, 1, on); the 8 groups are
stored nowhere and are the official constant.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights import CheckpointError, describe_mismatch, load_torch_file

FILE = "mask_vae.pt"


@dataclass(frozen=True)
class DedicatedMaskVAEConfig:
    """The official defaults (train_maskvae.py / the mask-vae-joint yaml)."""

    hidden_channels: int = 96
    latent_channels: int = 16
    num_res_blocks: int = 2
    dim_mult: tuple[int, ...] = (1, 2, 4)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    group_norm: bool = True
    num_groups: int = 8
    mlp_ratio: int = 4
    mlp_depth: int = 1


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over [B, C, T, H, W] with statistics per frame (channels of a group x H x W), never across time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class ResBlock(nn.Module):
    """shortcut(x) + [GroupNorm, SiLU, conv3, GroupNorm, SiLU, conv3](x); 1x1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int, group_norm: bool, groups: int):
        super().__init__()
        norm = (lambda c: [FrameGroupNorm(groups, c)]) if group_norm else (lambda c: [])
        self.residual = nn.Sequential(*norm(cin), nn.SiLU(), nn.Conv3d(cin, cout, 3, padding=1),
                                      *norm(cout), nn.SiLU(), nn.Conv3d(cout, cout, 3, padding=1))
        self.shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class Downsample(nn.Module):
    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=(2 if temporal else 1, 2, 2), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.scale = (2.0 if temporal else 1.0, 2.0, 2.0)
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Interpolated in float32, as the official code does, so half-precision runs resample alike.
        up = F.interpolate(x.float(), scale_factor=self.scale, mode="trilinear", align_corners=False)
        return self.conv(up.type_as(x))


class ChannelMLP(nn.Module):
    """x + MLP(x) over the channels at every position: depth Linear layers, width channels * ratio, SiLU between."""

    def __init__(self, channels: int, ratio: int, depth: int):
        super().__init__()
        widths = [channels] + [channels * ratio] * (depth - 1) + [channels]
        layers: list[nn.Module] = []
        for i in range(depth):  # Identity after the last Linear keeps the official layer numbering (mlp.0, mlp.2, ..)
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.SiLU() if i < depth - 1 else nn.Identity()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x.movedim(1, -1)).movedim(-1, 1)


def _out_conv(channels: int, out: int, config: DedicatedMaskVAEConfig) -> nn.Sequential:
    norm = FrameGroupNorm(config.num_groups, channels) if config.group_norm else nn.Identity()
    return nn.Sequential(norm, nn.SiLU(), nn.Conv3d(channels, out, 3, padding=1))


class MatteEncoder(nn.Module):
    def __init__(self, config: DedicatedMaskVAEConfig):
        super().__init__()
        c, n = config, config.num_res_blocks
        dims = [c.hidden_channels * m for m in c.dim_mult]
        self.conv_in = nn.Conv3d(1, c.hidden_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        cin = c.hidden_channels
        for out, temporal in zip(dims, c.temporal_downsample):
            blocks = [ResBlock(cin if i == 0 else out, out, c.group_norm, c.num_groups) for i in range(n)]
            self.down_blocks.append(nn.ModuleList(blocks + [Downsample(out, temporal)]))
            cin = out
        self.bottleneck_mlp = ChannelMLP(dims[-1], c.mlp_ratio, c.mlp_depth)
        self.conv_out = _out_conv(dims[-1], c.latent_channels, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            for layer in stage:
                x = layer(x)
        return self.conv_out(self.bottleneck_mlp(x))


class MatteDecoder(nn.Module):
    def __init__(self, config: DedicatedMaskVAEConfig):
        super().__init__()
        c, n = config, config.num_res_blocks
        dims = [c.hidden_channels * m for m in reversed(c.dim_mult)]
        self.conv_in = nn.Conv3d(c.latent_channels, dims[0], 3, padding=1)
        self.bottleneck_mlp = ChannelMLP(dims[0], c.mlp_ratio, c.mlp_depth)
        self.up_blocks = nn.ModuleList()
        cin = dims[0]
        for out, temporal in zip(dims[1:] + [c.hidden_channels], reversed(c.temporal_downsample)):
            blocks = [ResBlock(cin if j == 0 else out, out, c.group_norm, c.num_groups) for j in range(n + 1)]
            self.up_blocks.append(nn.ModuleList([Upsample(cin, temporal)] + blocks))
            cin = out
        self.conv_out = _out_conv(c.hidden_channels, 1, c)

    def forward(self, z: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        x = self.bottleneck_mlp(self.conv_in(z))
        for stage in self.up_blocks:
            for layer in stage:
                x = layer(x)
        x = self.conv_out(x)
        return F.interpolate(x.float(), size=size, mode="trilinear", align_corners=False).type_as(x)


class DedicatedMaskVAE(nn.Module):
    """encode(matte [B,1,T,H,W] in [-1, 1]) -> raw latent [B, z, T', H/8, W/8]; decode(latent, (T, H, W)) -> matte
    in [-1, 1] (not clamped). The latent is not normalised: the projections map it to and from the DiT's space."""

    def __init__(self, config: DedicatedMaskVAEConfig = DedicatedMaskVAEConfig()):
        super().__init__()
        if len(config.temporal_downsample) != len(config.dim_mult):
            raise ValueError(f"temporal_downsample {config.temporal_downsample} needs one entry per dim_mult "
                             f"{config.dim_mult}")
        self.config = config
        self.encoder = MatteEncoder(config)
        self.decoder = MatteDecoder(config)

    def encode(self, matte: torch.Tensor) -> torch.Tensor:
        return self.encoder(matte)

    def decode(self, z: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        return self.decoder(z, size)


def fill_state(module: nn.Module, state: dict, what: str, path) -> None:
    """load_state_dict with one message naming the file when a key is missing or extra or a shape differs."""
    own = module.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise CheckpointError(describe_mismatch(what, path, missing, unexpected))
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(own[key].shape):
            found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{path}: {what}, {key} is {found} but the layout its other tensors give needs "
                                  f"{tuple(own[key].shape)}; the file is damaged or belongs to another model")
    module.load_state_dict(state)


def _config_from_tensors(encoder: dict, stored: dict, path: Path) -> DedicatedMaskVAEConfig:
    if "conv_in.weight" not in encoder or "conv_out.2.weight" not in encoder:
        raise CheckpointError(f"{path}: the encoder has no conv_in.weight / conv_out.2.weight; not an official "
                              f"MaskVAE {FILE}")
    hidden, latent = encoder["conv_in.weight"].shape[0], encoder["conv_out.2.weight"].shape[0]
    group_norm = "conv_out.0.weight" in encoder
    first_conv = 2 if group_norm else 1  # residual = [GroupNorm,] SiLU, conv, ...
    stages = sorted({int(k.split(".")[1]) for k in encoder if k.startswith("down_blocks.")})
    per_stage = {int(k.split(".")[2]) for k in encoder if k.startswith("down_blocks.0.")}
    widths = [encoder.get(f"down_blocks.{s}.0.residual.{first_conv}.weight") for s in stages]
    mlp = [k for k in encoder if k.startswith("bottleneck_mlp.mlp.") and k.endswith(".weight")]
    first = encoder.get("bottleneck_mlp.mlp.0.weight")
    if not stages or None in widths or first is None or any(w.shape[0] % hidden for w in widths):
        raise CheckpointError(f"{path}: its encoder's down_blocks / bottleneck_mlp do not form an official MaskVAE")
    temporal = stored.get("temporal_downsample", (False, True, True))
    if not isinstance(temporal, (list, tuple)) or len(temporal) != len(widths):
        raise CheckpointError(f"{path}: config temporal_downsample {temporal!r} needs one entry per stage "
                              f"({len(widths)})")
    config = DedicatedMaskVAEConfig(
        hidden_channels=hidden, latent_channels=latent, num_res_blocks=len(per_stage) - 1,
        dim_mult=tuple(w.shape[0] // hidden for w in widths),
        temporal_downsample=tuple(bool(t) for t in temporal),
        group_norm=group_norm, mlp_depth=len(mlp),
        mlp_ratio=first.shape[0] // first.shape[1] if len(mlp) > 1 else DedicatedMaskVAEConfig.mlp_ratio)
    said = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in stored.items()
            if k in ("hidden_channels", "latent_channels", "dim_mult")}
    wrong = {k: v for k, v in said.items() if v != getattr(config, k)}
    if wrong:
        raise CheckpointError(f"{path}: its config says {wrong} but its tensors give "
                              f"{ {k: getattr(config, k) for k in wrong} }; the file is damaged")
    return config


def load_dedicated_mask_vae(path: str | os.PathLike) -> DedicatedMaskVAE:
    """The official mask_vae.pt ({encoder, decoder, config}), read with weights_only, fp32, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MaskVAE file not found: {path}")
    state = load_torch_file(path, mmap=False)
    if not isinstance(state, dict) or not isinstance(state.get("encoder"), dict) \
            or not isinstance(state.get("decoder"), dict):
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an official MaskVAE {FILE} (a dict with encoder, decoder, config); "
                              f"found {found}")
    loose = [f"{part}.{k}" for part in ("encoder", "decoder") for k, v in state[part].items()
             if not isinstance(v, torch.Tensor)]
    if loose:
        raise CheckpointError(f"{path}: {loose[0]} is not a tensor; the file is damaged or not an official {FILE}")
    encoder = {k.removeprefix("module."): v for k, v in state["encoder"].items()}
    config = _config_from_tensors(encoder, dict(state.get("config") or {}), path)
    module = DedicatedMaskVAE(config)
    fill_state(module.encoder, encoder, f"official MaskVAE {FILE} encoder", path)
    fill_state(module.decoder, state["decoder"], f"official MaskVAE {FILE} decoder", path)
    return module.eval().requires_grad_(False)
