"""The official code's mask modes: how an alpha matte becomes the mask segment of the latent and back.

Every mode gives the interface of MaskVAE, `encode(alpha [B,1,T,H,W] in [0,1])` -> latent [B, z, T', H/8, W/8] and
`decode(latent)` -> alpha in [0, 1], so the pipeline, the nodes and the trainers do not care which one runs:

  vae-lora            the paper's alpha VAE (mask_vae.py; `mask_vae_lora.pt` or our .safetensors)
  vae                 the plain Wan VAE: the matte as a grey video in, the channel mean out (no file; the official
                      inference default)
  downsample          no network: the matte resized to the latent grid and repeated over the latent channels;
                      decoded as the channel mean resized back
  downsample-project  small learned convolutions instead (`mask_encoder.pt` + `mask_decoder.pt`; the default of the
                      official train.yaml)
  vae-project         the plain Wan VAE, and per-position MLPs (`mask_vae_projects.pt`) on the mask segment of the
                      DiT's input and output at every step: they travel with the DiT (MaskSegmentProjections)
  mask-vae-project    a dedicated MaskVAE (`mask_vae.pt`, dedicated_mask_vae.py) and the same two MLPs
  mask-vae-joint      (`mask_vae_projects.pt`) around it, not around the DiT: encode = project_in(MaskVAE.encode),
                      decode = MaskVAE.decode(project_out(latent)). The two modes differ only in training (a frozen
                      stage-1 MaskVAE, or one trained with the DiT); a mask-vae-project checkpoint holds no
                      mask_vae.pt of its own, so its stage-1 file is put beside it or given explicitly.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dedicated_mask_vae import FILE as DEDICATED_MASK_VAE_FILE, DedicatedMaskVAE, fill_state, load_dedicated_mask_vae
from .dit import RMSNorm
from .mask_vae import MASK_MODE as VAE_LORA, load_mask_vae
from .vae import WanVAE
from .weights import CheckpointError, describe_mismatch, load_torch_file, open_weights

log = logging.getLogger(__name__)

DEDICATED_MODES = ("mask-vae-project", "mask-vae-joint")
MASK_MODES = (VAE_LORA, "vae", "downsample", "downsample-project", "vae-project", *DEDICATED_MODES)
ENCODER_FILE, DECODER_FILE = "mask_encoder.pt", "mask_decoder.pt"
PROJECTIONS_FILE = "mask_vae_projects.pt"
TEMPORAL_STRIDE, SPATIAL_STRIDE = 4, 8


def video_size(latent: torch.Tensor) -> tuple[int, int, int]:
    """(T, H, W) of the video a latent [B, C, T', H', W'] decodes to: 4(T'-1)+1 frames, 8x the sides."""
    frames, height, width = latent.shape[2:]
    return (frames - 1) * TEMPORAL_STRIDE + 1, height * SPATIAL_STRIDE, width * SPATIAL_STRIDE


def latent_size(alpha: torch.Tensor) -> tuple[int, int, int]:
    frames, height, width = alpha.shape[2:]
    return (frames - 1) // TEMPORAL_STRIDE + 1, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE


def _check_alpha(alpha: torch.Tensor) -> None:
    if not isinstance(alpha, torch.Tensor) or alpha.dim() != 5 or alpha.shape[1] != 1:
        shape = tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__
        raise ValueError(f"a matte is [batch, 1, frames, height, width] in [0, 1], got {shape}")


class PlainVAEMatte(nn.Module):
    """'vae' mode: the matte through the plain Wan VAE as a 3-channel video in [-1, 1] (also 'vae-project''s
    decoding, whose projections run inside the DiT)."""

    def __init__(self, vae: WanVAE, mask_mode: str = "vae"):
        super().__init__()
        self.vae = vae
        self.mask_mode = mask_mode

    def encode(self, alpha: torch.Tensor, *, tile=None) -> torch.Tensor:
        _check_alpha(alpha)
        return self.vae.encode((alpha * 2 - 1).expand(-1, 3, -1, -1, -1), tile=tile)

    def decode(self, latent: torch.Tensor, *, tile=None, clamp: bool = True) -> torch.Tensor:
        """clamp=False keeps gradients everywhere (training's matte loss)."""
        matte = (self.vae.decode(latent, tile=tile, clamp=clamp).mean(dim=1, keepdim=True) + 1) / 2
        return matte.clamp(0, 1) if clamp else matte


class DownsampledMatte(nn.Module):
    """'downsample' mode: the matte trilinearly resized to the latent grid, in [-1, 1], on every channel."""

    mask_mode = "downsample"

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def encode(self, alpha: torch.Tensor, *, tile=None) -> torch.Tensor:
        _check_alpha(alpha)
        small = F.interpolate(alpha.float(), size=latent_size(alpha), mode="trilinear", align_corners=False)
        return (small * 2 - 1).expand(-1, self.channels, -1, -1, -1).contiguous()

    def decode(self, latent: torch.Tensor, *, tile=None, clamp: bool = True) -> torch.Tensor:
        small = (latent.float().mean(dim=1, keepdim=True) + 1) / 2
        matte = F.interpolate(small, size=video_size(latent), mode="trilinear", align_corners=False)
        return matte.clamp(0, 1) if clamp else matte


class MaskEncoder(nn.Module):
    """Three 3x3x3 convolutions, strides (2,2,2), (2,2,2), (1,2,2), SiLU between: a matte in [-1, 1] -> latent.
    Strides halve time twice, so the result is resized to the latent grid when the causal packing differs."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv3d(1, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv3d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv3d(hidden, channels, 3, stride=(1, 2, 2), padding=1))

    def forward(self, x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        z = self.encoder(x)
        return z if tuple(z.shape[2:]) == tuple(size) else F.interpolate(z, size=size, mode="trilinear",
                                                                       align_corners=False)


class MaskDecoder(nn.Module):
    """Three 3x3x3 transposed convolutions (x2 space, then x2 time and space twice), resized to the video, plus a
    residual refinement: latent -> matte in [-1, 1]."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.decoder = nn.Sequential(
            nn.ConvTranspose3d(channels, hidden, 3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1)), nn.SiLU(),
            nn.ConvTranspose3d(hidden, hidden, 3, stride=2, padding=1, output_padding=1), nn.SiLU(),
            nn.ConvTranspose3d(hidden, 1, 3, stride=2, padding=1, output_padding=1))
        self.refine = nn.Sequential(nn.Conv3d(1, hidden, 3, padding=1), nn.SiLU(), nn.Conv3d(hidden, 1, 3, padding=1))

    def forward(self, z: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        x = self.decoder(z)
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return x + self.refine(x)


class LearnedDownsampleMatte(nn.Module):
    """'downsample-project' mode: MaskEncoder / MaskDecoder (the official mask_encoder.pt / mask_decoder.pt)."""

    mask_mode = "downsample-project"

    def __init__(self, channels: int, hidden: int = 32):
        super().__init__()
        self.encoder = MaskEncoder(channels, hidden)
        self.decoder = MaskDecoder(channels, hidden)

    def encode(self, alpha: torch.Tensor, *, tile=None) -> torch.Tensor:
        _check_alpha(alpha)
        weight = self.encoder.encoder[0].weight
        return self.encoder((alpha * 2 - 1).to(weight.dtype), latent_size(alpha)).float()

    def decode(self, latent: torch.Tensor, *, tile=None) -> torch.Tensor:
        weight = self.decoder.refine[0].weight
        return ((self.decoder(latent.to(weight.dtype), video_size(latent)).float() + 1) / 2).clamp(0, 1)


class GatedPointwiseMLP(nn.Module):
    """x + tanh(gate) * norm(MLP(x)) over the channel axis of [B, C, T, H, W]; Linear / SiLU layers, optional
    RMSNorm after the MLP."""

    def __init__(self, channels: int, hidden: int, depth: int, rms_norm: bool):
        super().__init__()
        widths = [channels] + [hidden] * (depth - 1) + [channels]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < depth - 1:
                layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)
        self.norm = RMSNorm(channels) if rms_norm else nn.Identity()
        self.gate = nn.Parameter(torch.tensor(0.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.movedim(1, -1)
        return (h + torch.tanh(self.gate) * self.norm(self.mlp(h))).movedim(-1, 1)


class ProjectIn(nn.Module):
    """The official project_in: a per-channel affine (pre_scale, pre_bias), then the gated MLP."""

    def __init__(self, channels: int, hidden: int, depth: int, rms_norm: bool):
        super().__init__()
        self.pre_scale = nn.Parameter(torch.ones(1, channels, 1, 1, 1))
        self.pre_bias = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
        self.proj = GatedPointwiseMLP(channels, hidden, depth, rms_norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z * self.pre_scale + self.pre_bias)


class ProjectOut(nn.Module):
    def __init__(self, channels: int, hidden: int, depth: int, rms_norm: bool):
        super().__init__()
        self.proj = GatedPointwiseMLP(channels, hidden, depth, rms_norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z)


class MaskSegmentProjections(nn.Module):
    """'vae-project': project_in on the mask segments of the DiT's input, project_out on those of its output."""

    def __init__(self, channels: int, hidden: int = 128, depth: int = 2, rms_norm: bool = False):
        super().__init__()
        self.proj_in = ProjectIn(channels, hidden, depth, rms_norm)
        self.proj_out = ProjectOut(channels, hidden, depth, rms_norm)

    @staticmethod
    def _on_masks(x: torch.Tensor, spec, fn) -> torch.Tensor:
        parts = spec.split(x)
        return spec.join({name: fn(part) if spec.kind(name) == "mask" else part for name, part in parts.items()})

    def project_input(self, x: torch.Tensor, spec) -> torch.Tensor:
        weight = self.proj_in.pre_scale
        return self._on_masks(x, spec, lambda part: self.proj_in(part.to(weight.dtype)).to(x.dtype))

    def project_output(self, velocity: torch.Tensor, spec) -> torch.Tensor:
        weight = self.proj_out.proj.gate
        return self._on_masks(velocity, spec, lambda part: self.proj_out(part.to(weight.dtype)).to(velocity.dtype))


def load_projections(path: str | os.PathLike) -> MaskSegmentProjections:
    """The official mask_vae_projects.pt ({proj_in, proj_out, config}), read with weights_only."""
    path = Path(path)
    state = load_torch_file(path, mmap=False)
    if not isinstance(state, dict) or not isinstance(state.get("proj_in"), dict) \
            or not isinstance(state.get("proj_out"), dict):
        raise CheckpointError(f"{path} is not an official {PROJECTIONS_FILE} (a dict with proj_in, proj_out, config)")
    config = state.get("config") or {}
    first = state["proj_in"].get("proj.mlp.0.weight")
    if first is None:
        raise CheckpointError(f"{path}: proj_in has no proj.mlp.0.weight")
    depth = sum(1 for k in state["proj_in"] if k.startswith("proj.mlp.") and k.endswith(".weight"))
    module = MaskSegmentProjections(first.shape[1], first.shape[0] if depth > 1 else int(config.get(
        "hidden_channels", 128)), depth, "proj.norm.weight" in state["proj_in"])
    for name, part in (("proj_in", module.proj_in), ("proj_out", module.proj_out)):
        fill_state(part, state[name], f"official {PROJECTIONS_FILE} {name}", path)
    return module.eval().requires_grad_(False)


def _torch_state(path: Path) -> dict:
    # weights_only: these files are state dicts of tensors; nothing else is ever unpickled.
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (what the official trainer saves there)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_learned_downsample(folder: str | os.PathLike, channels: int) -> LearnedDownsampleMatte:
    """The 'downsample-project' pair from `folder`/mask_encoder.pt and mask_decoder.pt."""
    folder = Path(folder)
    missing = [name for name in (ENCODER_FILE, DECODER_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"'downsample-project' mask mode needs {ENCODER_FILE} and {DECODER_FILE}; missing "
                                f"{missing} in {folder}")
    encoder, decoder = _torch_state(folder / ENCODER_FILE), _torch_state(folder / DECODER_FILE)
    if "encoder.0.weight" not in encoder:
        raise CheckpointError(f"{folder / ENCODER_FILE}: no encoder.0.weight; not an official mask encoder")
    hidden, out = encoder["encoder.0.weight"].shape[0], encoder["encoder.4.weight"].shape[0]
    if out != channels:
        raise CheckpointError(f"{folder / ENCODER_FILE} encodes to {out} channels but the VAE latent has {channels}")
    module = LearnedDownsampleMatte(channels, hidden)
    for part, state, name in ((module.encoder, encoder, ENCODER_FILE), (module.decoder, decoder, DECODER_FILE)):
        own = part.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(describe_mismatch("official " + name, folder / name, missing, unexpected))
        wrong = [k for k in own if own[k].shape != state[k].shape]
        if wrong:
            raise CheckpointError(f"{folder / name}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected "
                                  f"{tuple(own[wrong[0]].shape)}")
        part.load_state_dict(state)
    return module.eval().requires_grad_(False)


class DedicatedMaskVAEMatte(nn.Module):
    """'mask-vae-project' / 'mask-vae-joint': the dedicated MaskVAE with project_in after its encoder (into the
    DiT's latent space) and project_out before its decoder; the DiT itself runs without projections."""

    def __init__(self, mask_vae: DedicatedMaskVAE, projections: MaskSegmentProjections, mask_mode: str):
        super().__init__()
        self.mask_vae, self.projections, self.mask_mode = mask_vae, projections, mask_mode

    def encode(self, alpha: torch.Tensor, *, tile=None) -> torch.Tensor:
        _check_alpha(alpha)
        weight = self.mask_vae.encoder.conv_in.weight
        return self.projections.proj_in(self.mask_vae.encode((alpha * 2 - 1).to(weight.dtype))).float()

    def decode(self, latent: torch.Tensor, *, tile=None) -> torch.Tensor:
        weight = self.mask_vae.decoder.conv_in.weight
        z = self.projections.proj_out(latent.to(weight.dtype))
        return ((self.mask_vae.decode(z, video_size(latent)).float() + 1) / 2).clamp(0, 1)


def dedicated_files(path: str | os.PathLike | None = None,
                    adapter: str | os.PathLike | None = None) -> tuple[Path | None, Path | None]:
    """(mask_vae.pt, mask_vae_projects.pt) of a mask-vae-* model, None where absent. As the official inference:
    the MaskVAE is the given file (a folder: its mask_vae.pt), else the adapter folder's; the projections are the
    adapter folder's, else the ones beside the MaskVAE."""
    path = Path(path) if path is not None else None
    folder = Path(adapter) if adapter is not None and Path(adapter).is_dir() else None
    if path is not None and path.is_dir():
        path = path / DEDICATED_MASK_VAE_FILE
    elif path is not None and path.name == PROJECTIONS_FILE:  # the projections picked: the MaskVAE beside them
        path = path.parent / DEDICATED_MASK_VAE_FILE
    if path is None and folder is not None:
        path = folder / DEDICATED_MASK_VAE_FILE
    near = [folder] if folder is not None else []
    near += [path.parent] if path is not None else []
    projections = next((d / PROJECTIONS_FILE for d in near if (d / PROJECTIONS_FILE).is_file()), None)
    return (path if path is not None and path.is_file() else None), projections


def _need_dedicated_files(mode: str, path, adapter) -> tuple[Path, Path]:
    mask_vae, projections = dedicated_files(path, adapter)
    missing = [name for name, hit in ((DEDICATED_MASK_VAE_FILE, mask_vae), (PROJECTIONS_FILE, projections))
               if hit is None]
    if missing:
        where = ", ".join(str(p) for p in (path, adapter) if p is not None) or "no file or adapter given"
        raise FileNotFoundError(
            f"'{mode}' mask mode needs the MaskVAE {DEDICATED_MASK_VAE_FILE} and its projections {PROJECTIONS_FILE}; "
            f"missing {missing} (looked at: {where}). A checkpoint folder of the official trainer holds "
            f"{PROJECTIONS_FILE} (and, for mask-vae-joint, {DEDICATED_MASK_VAE_FILE}); a mask-vae-project run keeps "
            f"its stage-1 MaskVAE frozen and does not save it: copy the {DEDICATED_MASK_VAE_FILE} that "
            f"train_maskvae.py wrote beside the adapter, or give it as the alpha VAE file")
    return mask_vae, projections


def load_dedicated(mode: str, mask_vae_file: str | os.PathLike,
                   projections_file: str | os.PathLike) -> DedicatedMaskVAEMatte:
    """The mask-vae-* codec from the official mask_vae.pt and mask_vae_projects.pt, fp32, in eval mode."""
    mask_vae, projections = load_dedicated_mask_vae(mask_vae_file), load_projections(projections_file)
    latent, width = mask_vae.config.latent_channels, projections.proj_in.pre_scale.shape[1]
    if latent != width:
        raise CheckpointError(f"{mask_vae_file} encodes to {latent} channels but {projections_file} projects "
                              f"{width}; the two files belong to different runs")
    return DedicatedMaskVAEMatte(mask_vae, projections, mode).eval()


def mode_of_file(path: str | os.PathLike) -> str:
    """The mask mode an alpha file (or a folder of them) belongs to, from its name: a mask_vae.pt is taken for
    'mask-vae-project', whose file is the same as 'mask-vae-joint''s (only the run config tells them apart)."""
    path = Path(path)
    if path.is_dir():
        return "mask-vae-project" if (path / DEDICATED_MASK_VAE_FILE).is_file() else "downsample-project"
    if path.name in (ENCODER_FILE, DECODER_FILE):
        return "downsample-project"
    if path.name == PROJECTIONS_FILE:
        return "mask-vae-project" if (path.parent / DEDICATED_MASK_VAE_FILE).exists() else "vae-project"
    if path.name == DEDICATED_MASK_VAE_FILE:
        return "mask-vae-project"
    return VAE_LORA


def trained_mask_mode(adapter: str | os.PathLike) -> str | None:
    """The mask mode one of our adapter files records (the trainer writes it; older adapters have none)."""
    from .checkpoints import METADATA_KEY
    path = Path(adapter)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    mode = json.loads(open_weights(path).metadata.get(METADATA_KEY, "{}")).get("mask_mode")
    return mode if mode in MASK_MODES else None


def choose_mask_mode(mask_file: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None,
                     mode: str | None = None) -> tuple[str, Path | None]:
    """(mode, file) for a model: `mode` if given, else the alpha file's, else the mask_mode of the official run
    config.yaml beside an official adapter folder, else what the adapter folder's files say, else 'vae' (the
    official inference default). Logs its choice and the files it found."""
    from .checkpoints import official_run_config

    file = Path(mask_file) if mask_file is not None else None
    folder = Path(adapter) if adapter is not None and Path(adapter).is_dir() else None
    run = official_run_config(folder) if folder is not None else None
    run_mode = str(run[1]["mask_mode"]) if run is not None and run[1].get("mask_mode") else None
    why = "as asked"
    if mode is None and file is not None:
        mode, why = mode_of_file(file), f"from {file}"
        if mode in DEDICATED_MODES and run_mode in DEDICATED_MODES:  # the files cannot tell project from joint
            mode, why = run_mode, f"from {file} and the mask_mode of {run[0]}"
    if mode is None and run_mode is not None:
        mode, why = run_mode, f"the mask_mode of {run[0]}"
        needs = {VAE_LORA: "mask_vae_lora.pt", "downsample-project": f"{ENCODER_FILE} and {DECODER_FILE}"}
        if mode in needs:
            raise FileNotFoundError(f"{run[0]} says mask_mode {mode!r}, which needs {needs[mode]}; none was found "
                                    f"beside the adapter {adapter} or in the model folder; add the file(s) or pass "
                                    f"the alpha VAE explicitly")
    recorded = trained_mask_mode(adapter) if adapter is not None and folder is None else None
    if mode is None and file is None and recorded is not None:
        mode, why = recorded, f"the mask mode adapter {adapter} was trained in"
    if mode is None and file is None and folder is not None and (folder / PROJECTIONS_FILE).is_file():
        mode, why = mode_of_file(folder / PROJECTIONS_FILE), f"{PROJECTIONS_FILE} beside the adapter"
    if mode is None:
        mode, why = "vae", "no alpha VAE file found, so the plain Wan VAE decodes mattes (the official default)"
    if mode == "vae-project" and not (folder is not None and (folder / PROJECTIONS_FILE).is_file()):
        raise FileNotFoundError(f"'vae-project' mask mode needs {PROJECTIONS_FILE} in the official checkpoint folder "
                                f"given as the adapter (the DiT applies its projections); none found")
    if mode in DEDICATED_MODES:
        mask_vae, projections = _need_dedicated_files(mode, file, adapter)
        file, why = file or mask_vae, f"{why}; MaskVAE {mask_vae}, projections {projections} (around the MaskVAE)"
    log.info("mask mode %s: %s", mode, why)
    return mode, file


def load_mask_mode(vae: WanVAE, mode: str | None = None, path: str | os.PathLike | None = None, *,
                   adapter: str | os.PathLike | None = None) -> nn.Module:
    """The alpha codec of `mode` on `vae`; mode None: the file's mode, or 'vae' when there is no file.

    path: the alpha VAE file (vae-lora), mask_encoder.pt / mask_decoder.pt or their folder (downsample-project),
    mask_vae.pt or its folder (mask-vae-*; the projections come from the official checkpoint folder `adapter`, else
    from beside it)."""
    mode = mode or (mode_of_file(path) if path is not None else "vae")
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {list(MASK_MODES)}")
    if mode == VAE_LORA:
        if path is None:
            raise FileNotFoundError("'vae-lora' mask mode needs the alpha VAE file (mask_vae_lora.pt or "
                                    "mask_vae.safetensors)")
        return load_mask_vae(vae, path)
    if mode == "downsample-project":
        if path is None:
            raise FileNotFoundError(f"'downsample-project' mask mode needs {ENCODER_FILE} and {DECODER_FILE}")
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        weight = vae.conv2.weight
        return load_learned_downsample(folder, vae.z_dim).to(weight.device)
    if mode in DEDICATED_MODES:
        mask_vae_file, projections_file = _need_dedicated_files(mode, path, adapter)
        codec = load_dedicated(mode, mask_vae_file, projections_file)
        if codec.mask_vae.config.latent_channels != vae.z_dim:
            raise CheckpointError(f"{mask_vae_file} encodes to {codec.mask_vae.config.latent_channels} channels but "
                                  f"the VAE latent has {vae.z_dim}; it belongs to another model")
        return codec.to(vae.conv2.weight.device)
    if mode == "downsample":
        return DownsampledMatte(vae.z_dim)
    return PlainVAEMatte(vae, mode)  # 'vae', and 'vae-project' whose projections the DiT carries
