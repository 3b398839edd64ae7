"""A Wan2.1-architecture video VAE trained from scratch: what a demo model without Wan's weights needs.

Real LayerT2V runs use Wan's own VAE; this trains the same architecture (any width) on the RGB layers of a
dataset (full, background and premultiplied foregrounds) with an L1 that can weigh foreground pixels more and a
small KL term, then measures the latent mean/std the DiT's latents are normalised by and stores them in the file.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from layert2v_core.vae import (AttentionBlock, CausalConv3d, Resample, VAEConfig, WanVAE, load_vae, save_vae,
                               stream_decode)

from .config import TrainConfig
from .data import LayeredVideoDataset, collate_layered


INITIAL_LOG_VAR = -6.0


@torch.no_grad()
def initialise_for_training(vae: WanVAE) -> None:
    """He-normal convolutions with zero bias, and a narrow posterior.

    PyTorch's default init shrinks the signal at every conv while the biases stay, so after the encoder's ~20 convs
    and per-pixel RMS norms the code barely depends on the input (measured: its spread across inputs was 1-18% of its
    spread overall) and training sits at a constant output for hundreds of steps. Unit posterior noise at the
    start would likewise swamp the code."""
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for module in vae.modules():
        if isinstance(module, AttentionBlock):
            torch.nn.init.zeros_(module.proj.weight)  # attention blocks start as the identity, as in the original
    vae.conv1.bias[vae.config.z_dim:] = INITIAL_LOG_VAR
    start_frame_by_frame(vae)


@torch.no_grad()
def start_frame_by_frame(vae: WanVAE) -> None:
    """Make every frame pass through on its own: causal 3D kernels keep only their current-frame slice and the
    temporal down-samplers pick a frame; the temporal up-samplers emit, per input frame, the frame halfway from the
    previous one and then the frame itself.

    Single-frame training reaches only those slices, so clip training then starts from what the image phase learned
    instead of from random temporal weights (measured: its loss jumped from 0.07 to 0.42 when clips began). Up-samplers
    that repeat their frame instead decode a 4-frame latent group as one still frame: a ground-truth clip passed
    through such a VAE moved in 4-pixel jumps (largest/median centroid step 10.4), still 3.6 after 1000 clip steps.
    Halfway frames give steady motion from the start in every latent group but the first (1.0-1.5 px steps where the
    truth moves 1.2): the first group's up-samplers see no previous frame (Wan pads them with zeros), which clip
    training then has to learn."""
    samplers = [m.time_conv for m in vae.modules() if isinstance(m, Resample) and hasattr(m, "time_conv")]
    for module in vae.modules():
        if isinstance(module, CausalConv3d) and module.weight.shape[2] > 1 and module not in samplers:
            current = torch.empty_like(module.weight[:, :, -1])
            torch.nn.init.kaiming_normal_(current, nonlinearity="relu")  # fan-in of the one slice that is used
            module.weight.zero_()
            module.weight[:, :, -1] = current
    for conv in samplers:
        conv.weight.zero_()
        conv.bias.zero_()
        eye = torch.eye(conv.weight.shape[1], dtype=conv.weight.dtype)
        channels = eye.shape[0]
        if conv.weight.shape[0] == channels:  # a down-sampler: the current frame
            conv.weight[:, :, -1, 0, 0] = eye
        else:  # an up-sampler's two output frames per input frame: halfway from the previous one, then the current
            conv.weight[:channels, :, -2, 0, 0] = eye / 2
            conv.weight[:channels, :, -1, 0, 0] = eye / 2
            conv.weight[channels:, :, -1, 0, 0] = eye


class VAETask:
    name = "vae: video autoencoder"

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu", width: int = 16,
                 kl_weight: float = 1e-4, foreground_weight: float = 0.0, temporal_weight: float = 0.0):
        """`cfg.vae` (optional) continues from a VAE file instead of starting from scratch. `foreground_weight` w
        weighs the L1 of pixels under any foreground's alpha by 1 + w·alpha: small shapes are a few percent of the
        pixels, and with plain L1 the VAE learns the backgrounds long before it keeps any shape (measured: none
        visible after 1500 steps; blobs in place after 300 with w = 20). `temporal_weight` adds the same weighted L1
        on frame-to-frame differences: per-frame L1 barely charges a decoder that repeats a frame through a 4-frame
        latent group (the shape a pixel or two behind), while the differences of a repeated frame are all wrong."""
        self.cfg, self.kl_weight, self.foreground_weight = cfg, kl_weight, foreground_weight
        self.temporal_weight = temporal_weight
        if cfg.vae:
            self.module = load_vae(cfg.vae, dtype=torch.float32, device=device).requires_grad_(True)
        else:
            config = VAEConfig(dim=width, z_dim=16, latent_mean=(0.0,) * 16, latent_std=(1.0,) * 16)
            self.module = WanVAE(config).to(device)
            initialise_for_training(self.module)
        self.dataset = LayeredVideoDataset(cfg.data, cfg.frames, cfg.height, cfg.width, cfg.frame_sampling,
                                           cfg.seed, cfg.max_foregrounds)
        self.collate = collate_layered

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.module.named_parameters())

    @staticmethod
    def videos(batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """The RGB layers of a batch: all of them, or with a generator one drawn per sample (a cheaper step
        that still sees full, background and premultiplied foregrounds over the run)."""
        layers = torch.cat([batch["full"][:, None], batch["background"][:, None], batch["foregrounds"]], dim=1)
        if generator is None:
            return layers.flatten(0, 1)
        pick = torch.randint(layers.shape[1], (layers.shape[0],), generator=generator)
        return layers[torch.arange(layers.shape[0]), pick]

    def loss(self, module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        vae = self.module
        device = vae.conv1.weight.device
        video = self.videos(batch, generator).to(device)
        mu, log_var = vae.encode_moments(video)
        log_var = log_var.clamp(-30, 20)
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=generator).to(mu.device)
        recon = stream_decode(vae.decoder, vae.conv2, z)
        error = (recon - video).abs()
        weight = 1 + self.foreground_weight * batch["alphas"].amax(1).to(device)  # [B, 1, T, H, W]
        weighted = (error * weight).mean() / weight.mean()
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).mean()
        loss, logs = weighted + self.kl_weight * kl, {"l1": error.mean().item(), "kl": kl.item()}
        if self.temporal_weight and video.shape[2] > 1:
            motion_error = (recon.diff(dim=2) - video.diff(dim=2)).abs()
            motion_weight = torch.maximum(weight[:, :, 1:], weight[:, :, :-1])  # where the shape is or was
            temporal = (motion_error * motion_weight).mean() / motion_weight.mean()
            loss, logs["temporal"] = loss + self.temporal_weight * temporal, temporal.item()
        return loss, logs

    @torch.no_grad()
    def latent_stats(self, samples: int = 32) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mus = []
        for index in range(min(samples, len(self.dataset))):
            video = self.videos(self.collate([self.dataset[index]])).to(self.module.conv1.weight.device)
            mus.append(self.module.encode_moments(video)[0].transpose(0, 1).flatten(1))
        mu = torch.cat(mus, dim=1)
        return tuple(mu.mean(1).tolist()), tuple(mu.std(1).clamp_min(1e-3).tolist())

    def export(self, folder: Path, values: dict[str, torch.Tensor]) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for name, param in self.module.named_parameters():
                param.copy_(values[name])
        mean, std = self.latent_stats()
        self.module.config = dataclasses.replace(self.module.config, latent_mean=mean, latent_std=std)
        path = folder / "vae.safetensors"
        save_vae(self.module, path)
        return [path]
