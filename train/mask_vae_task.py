"""Stage 1: the alpha VAE learns mattes (Wan encoder frozen; projection head + decoder LoRA trained).

Loss (paper eq. 8): SmoothL1 + λ_edge·edge + λ_perc·perceptual, the perceptual term being VGG16 features when
weights are given and multi-scale SSIM otherwise (the log says which).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from layert2v_core.mask_vae import MaskVAE, MaskVAEConfig, save_mask_vae
from layert2v_core.model_folder import find_components
from layert2v_core.vae import frozen_vae_dtype, load_vae

from .config import TrainConfig
from .data import LayeredVideoDataset, collate_layered
from .losses import edge_loss, ms_ssim_loss
from .perceptual import VGGPerceptual


class MaskVAETask:
    name = "stage 1: alpha VAE"

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        vae = load_vae(find_components(cfg.model or None, ("vae",), vae=cfg.vae or None).vae,
                       dtype=frozen_vae_dtype(device), device=device)
        config = MaskVAEConfig(lora_rank=cfg.mask_lora_rank, lora_alpha=cfg.mask_lora_alpha,
                               proj_hidden=cfg.mask_proj_hidden)
        self.module = MaskVAE(vae, config).to(device)
        self.perceptual = VGGPerceptual(cfg.perceptual_weights).to(device) if cfg.perceptual_weights else None
        print(f"perceptual term: {'VGG16 features from ' + cfg.perceptual_weights if self.perceptual else 'MS-SSIM'}")
        self.dataset = LayeredVideoDataset(cfg.data, cfg.frames, cfg.height, cfg.width, cfg.frame_sampling,
                                           cfg.seed, cfg.max_foregrounds)
        self.collate = collate_layered

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.module.adapter_state_dict())

    def loss(self, module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        alphas = batch["alphas"].flatten(0, 1).to(self.module.head.out_conv.weight.device)  # every matte of the batch
        pred = module(alphas)
        rec = F.smooth_l1_loss(pred, alphas)
        edge = edge_loss(pred, alphas)
        perc = self.perceptual(pred, alphas) if self.perceptual is not None else ms_ssim_loss(pred, alphas)
        loss = rec + self.cfg.lambda_edge * edge + self.cfg.lambda_perc * perc
        return loss, {"rec": rec.item(), "edge": edge.item(), "perc": perc.item()}

    def export(self, folder: Path, values: dict[str, torch.Tensor]) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for name, param in self.module.adapter_state_dict().items():
                param.copy_(values[name])
        path = folder / "mask_vae.safetensors"
        save_mask_vae(self.module, path)
        return [path]

