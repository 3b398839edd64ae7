"""The alpha-matte VAE of LayerT2V ('vae-lora' mode): the Wan VAE adapted to single-channel mattes.

Encode: the matte in [0, 1] becomes a 3-channel video in [-1, 1], goes through the frozen Wan encoder, then a small
residual projection head whose tanh gate starts at 0 (so the head starts as the identity). Decode: the Wan decoder
with LoRA on every causal convolution (and on the post-quant conv); the alpha is the channel mean mapped to [0, 1].
The LoRA decoder shares the frozen base weights with the RGB VAE, so it costs only the adapter tensors.

Files: the official `mask_vae_lora.pt` ({project_in, decoder_lora, config}, read with weights_only=True) and our own
safetensors file (head + LoRA tensors, config in the metadata).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from .vae import AttentionBlock, CausalConv3d, ResidualBlock, StreamCache, WanVAE, conv3d, stream_decode
from .vae_tiling import Tiling, as_tiling, tiled_map
from .weights import (CheckpointError, describe_mismatch, load_torch_file, open_weights, read_tensor,
                      save_weights_atomic)

MASK_MODE = "vae-lora"
FORMAT_NAME = "layert2v-mask-vae"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class MaskVAEConfig:
    """Adapter sizes; the defaults are the paper's stage-1 settings (LoRA r=128, alpha=128)."""

    lora_rank: int = 128
    lora_alpha: float = 128.0
    proj_hidden: int = 64
    proj_res_blocks: int = 2
    proj_use_attention: bool = True
    proj_dropout: float = 0.0


class LatentProjection(nn.Module):
    """Residual head on the normalised latent: z + tanh(gate) * f(z), gate = 0 at start (the identity)."""

    def __init__(self, channels: int, hidden: int, res_blocks: int, use_attention: bool, dropout: float = 0.0):
        super().__init__()
        self.in_conv = CausalConv3d(channels, hidden, 3, padding=1)
        blocks: list[nn.Module] = []
        for _ in range(res_blocks):
            blocks.append(ResidualBlock(hidden, hidden, dropout))
            if use_attention:
                blocks.append(AttentionBlock(hidden))
        self.blocks = nn.ModuleList(blocks)
        self.out_conv = CausalConv3d(hidden, channels, 3, padding=1)
        self.gate = nn.Parameter(torch.tensor(0.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(z)
        for block in self.blocks:
            h = block(h)
        return z + torch.tanh(self.gate) * self.out_conv(h)


class LoRACausalConv3d(nn.Module):
    """A frozen causal conv plus a trainable low-rank branch (down: same kernel, up: 1x1x1, zero-initialised)."""

    # Written by hand: peft's Conv3d LoRA gives its branch the raw input, while a causal conv pads and prepends
    # cached frames inside its own forward, so the branch must share that padded tensor to stay causal.
    def __init__(self, base: CausalConv3d, rank: int, alpha: float):
        super().__init__()
        self.base = base
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_down = nn.Conv3d(base.in_channels, rank, base.kernel_size, base.stride, bias=False, **factory)
        self.lora_up = nn.Conv3d(rank, base.out_channels, 1, bias=False, **factory)
        nn.init.kaiming_normal_(self.lora_down.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.lora_up.weight)
        self.scale = alpha / rank

    @property
    def weight(self) -> torch.Tensor:  # the streaming loops read device / dtype from here
        return self.base.weight

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        padded, first_tap = self.base.pad(x, cache)
        out = self.base._conv_forward(padded, self.base.weight[:, :, first_tap:], self.base.bias)
        down = conv3d(padded, self.lora_down.weight[:, :, first_tap:], None, self.lora_down.stride)
        return out + self.scale * self.lora_up(down)


def _with_lora(module: nn.Module, rank: int, alpha: float) -> None:
    for name, child in module.named_children():
        if isinstance(child, CausalConv3d):
            setattr(module, name, LoRACausalConv3d(child, rank, alpha))
        else:
            _with_lora(child, rank, alpha)


class MaskVAE(nn.Module):
    """Alpha VAE: `encode(alpha [B,1,T,H,W] in [0,1])` -> latent, `decode(latent)` -> alpha in [0, 1].

    The RGB VAE passed in is frozen (requires_grad off) and shared, not copied.
    """

    mask_mode = MASK_MODE

    def __init__(self, vae: WanVAE, config: MaskVAEConfig = MaskVAEConfig()):
        super().__init__()
        if config.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {config.lora_rank}")
        self.config = config
        self.vae = vae.requires_grad_(False)
        weight = vae.conv2.weight
        self.head = LatentProjection(vae.z_dim, config.proj_hidden, config.proj_res_blocks,
                                     config.proj_use_attention, config.proj_dropout).to(weight.device, weight.dtype)
        # A structural copy of the decoder whose parameters are the VAE's own tensors (the memo maps them to
        # themselves), so LoRA wrappers can replace its convolutions without touching the RGB decoder.
        shared = {id(p): p for p in vae.decoder.parameters()}
        self.decoder = copy.deepcopy(vae.decoder, memo=shared)
        _with_lora(self.decoder, config.lora_rank, config.lora_alpha)
        self.conv2 = LoRACausalConv3d(vae.conv2, config.lora_rank, config.lora_alpha)

    # ---- training support ----
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (projection head + LoRA), by name: what our files store."""
        return {name: p for name, p in self.named_parameters(remove_duplicate=False)
                if name.startswith("head.") or ".lora_down." in name or ".lora_up." in name}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter_state_dict().values())

    # ---- encode / decode ----
    def encode(self, alpha: torch.Tensor, *, tile: Tiling | tuple[int, int] | None = None) -> torch.Tensor:
        """Matte [B, 1, 4k+1, H, W] in [0, 1] -> projected normalised latent [B, z, k+1, H/8, W/8] (fp32)."""
        _check_alpha(alpha)
        with torch.no_grad():  # the Wan encoder is frozen
            z = self.vae.encode((alpha * 2 - 1).expand(-1, 3, -1, -1, -1), tile=tile)
        weight = self.head.out_conv.weight
        return self.head(z.to(weight.dtype)).float()

    def decode(self, latent: torch.Tensor, *, tile: Tiling | tuple[int, int] | None = None,
               clamp: bool = True) -> torch.Tensor:
        """Latent -> matte [B, 1, 4(T'-1)+1, 8H', 8W'] in [0, 1]. clamp=False keeps gradients everywhere (training)."""
        if latent.dim() != 5 or latent.shape[1] != self.vae.z_dim:
            raise ValueError(f"the mask VAE decodes a latent [batch, {self.vae.z_dim}, frames, height, width], "
                             f"got {tuple(latent.shape)}")
        tiling = as_tiling(tile)
        z = self.vae.denormalize(latent)
        run = lambda part: stream_decode(self.decoder, self.conv2, part)
        rgb = run(z) if tiling is None else tiled_map(run, z, tiling, factor_in=1, factor_out=8)
        if clamp:
            rgb = rgb.clamp(-1, 1)
        alpha = (rgb.mean(dim=1, keepdim=True) + 1) / 2
        return alpha.clamp(0, 1) if clamp else alpha

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        """Reconstruction used by the stage-1 trainer (no clamping)."""
        return self.decode(self.encode(alpha), clamp=False)


def _check_alpha(alpha: torch.Tensor) -> None:
    if not isinstance(alpha, torch.Tensor) or alpha.dim() != 5 or alpha.shape[1] != 1:
        shape = tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__
        raise ValueError(f"the mask VAE encodes an alpha matte [batch, 1, frames, height, width] in [0, 1], "
                         f"got {shape}")
    if alpha.numel() and (alpha.min() < 0 or alpha.max() > 1):
        raise ValueError(f"alpha must lie in [0, 1], got values in [{alpha.min().item():.3g}, "
                         f"{alpha.max().item():.3g}]; map a [-1, 1] matte with (a + 1) / 2")


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
def save_mask_vae(mask_vae: MaskVAE, path: str | os.PathLike) -> None:
    """Write head + LoRA tensors to one safetensors file (atomically), the config in its metadata."""
    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "mask_mode": MASK_MODE,
                "config": json.dumps(asdict(mask_vae.config)), "z_dim": str(mask_vae.vae.z_dim)}
    save_weights_atomic(mask_vae.adapter_state_dict(), path, metadata)


def load_mask_vae(vae: WanVAE, path: str | os.PathLike) -> MaskVAE:
    """Build the mask VAE on `vae` from our safetensors file or the official `mask_vae_lora.pt`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask VAE file not found: {path}")
    if path.suffix == ".safetensors":
        source = open_weights(path)
        if source.metadata.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path} is not a LayerT2V mask VAE file (its metadata has no "
                                  f"format={FORMAT_NAME!r}); expected ours or the official mask_vae_lora.pt")
        known = {f.name for f in fields(MaskVAEConfig)}
        config = MaskVAEConfig(**{k: v for k, v in json.loads(source.metadata["config"]).items() if k in known})
        tensors = {k: (lambda k=k: read_tensor(source, k)) for k in source}
        fmt = "LayerT2V mask VAE"
    else:
        config, tensors = _read_official(path)
        fmt = "official mask_vae_lora.pt"
    mask_vae = MaskVAE(vae, config)
    _fill_adapters(mask_vae, tensors, fmt, path)
    return mask_vae


def _read_official(path: Path):
    # weights_only: the file is a dict of tensors and plain config values; nothing else is ever unpickled.
    state = load_torch_file(path, mmap=False)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a mask VAE checkpoint dict")
    if not ("project_in" in state and "decoder_lora" in state):
        if "proj_in" in state or "proj_out" in state:
            found = ("the 'vae-project' mode's latent projections, which the DiT loads from the official checkpoint "
                     "folder; mattes then decode with the plain Wan VAE (no alpha VAE file)")
        elif "encoder" in state and "decoder" in state:
            found = ("the dedicated MaskVAE of the 'mask-vae-project' / 'mask-vae-joint' modes; load it in one of "
                     "those modes (--mask-mode, or keep its official name mask_vae.pt so its mode is recognised), "
                     "with mask_vae_projects.pt beside it or in the checkpoint folder")
        else:
            found = f"keys {sorted(state)[:6]}"
        raise CheckpointError(f"{path} holds {found}. The '{MASK_MODE}' alpha VAE is a mask_vae_lora.pt with "
                              f"'project_in', 'decoder_lora' and 'config'")
    cfg = dict(state.get("config") or {})
    lora = {}
    for key, value in state["decoder_lora"].items():
        for prefix in ("module.", "model."):  # saved from the trainer's wrapper: model.<vae key>
            key = key[len(prefix):] if key.startswith(prefix) else key
        lora[key] = value
    project_in = state["project_in"]
    downs = [v for k, v in lora.items() if k.endswith("lora_down.weight")]
    if not downs or "in_conv.weight" not in project_in:
        raise CheckpointError(f"{path}: '{MASK_MODE}' checkpoint without LoRA tensors or projection head")
    rank = downs[0].shape[0]
    if int(cfg.get("lora_rank", rank)) != rank:
        raise CheckpointError(f"{path}: config says lora_rank {cfg['lora_rank']} but the tensors have rank {rank}")
    blocks = {int(k.split(".")[1]) for k in project_in if k.startswith("blocks.")}
    attention = any(k.startswith("blocks.") and k.endswith("to_qkv.weight") for k in project_in)
    config = MaskVAEConfig(
        lora_rank=rank, lora_alpha=float(cfg.get("lora_alpha", rank)),
        proj_hidden=project_in["in_conv.weight"].shape[0],
        proj_res_blocks=len(blocks) // (2 if attention else 1), proj_use_attention=attention,
        proj_dropout=float(cfg.get("proj_dropout", 0.0)))
    tensors = {f"head.{k}": (lambda v=v: v) for k, v in project_in.items()}
    tensors.update({k: (lambda v=v: v) for k, v in lora.items()})
    return config, tensors


def _fill_adapters(mask_vae: MaskVAE, tensors, fmt: str, path) -> None:
    own = mask_vae.adapter_state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise CheckpointError(describe_mismatch(fmt, path, missing, unexpected))
    with torch.no_grad():
        for name, param in own.items():
            value = tensors[name]()
            if tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(f"{path}: {fmt}, tensor {name} has shape {tuple(value.shape)} but this VAE "
                                      f"needs {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))
