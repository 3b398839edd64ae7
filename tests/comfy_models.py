"""A temporary ComfyUI models folder holding tiny random LayerT2V parts under the names the workflows use."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from layert2v_core.checkpoints import load_dit, save_dit_adapter
from train.tiny_models import write_model_folder
from workflows.build import ADAPTER, ALPHA_VAE, DIT, TEXT_ENCODER, VAE


def populate_models(root: Path, num_foregrounds: int = 2) -> Path:
    """root/{diffusion_models,vae,text_encoders,layert2v}/... from one tiny model folder; returns root."""
    parts = write_model_folder(root / "_tiny", seed=0, num_foregrounds=num_foregrounds)
    placed = {
        f"diffusion_models/{DIT}": parts / "dit.safetensors",
        f"vae/{VAE}": parts / "vae.safetensors",
        f"layert2v/{ALPHA_VAE}": parts / "mask_vae.safetensors",
        f"text_encoders/{TEXT_ENCODER}": parts / "text_encoder.safetensors",
    }
    for relative, source in placed.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / relative)
    # A small LoRA on one projection plus a non-zero LayerAdaLN table: a real adapter file, tiny.
    dit = load_dit(parts / "dit.safetensors")
    generator = torch.Generator().manual_seed(1)
    dit.layer_adaln.layer_modulation.data.normal_(0, 0.02, generator=generator)
    dim = dit.config.dim
    lora = {"blocks.0.self_attn.q": (torch.randn(2, dim, generator=generator) * 0.02,
                                     torch.randn(dim, 2, generator=generator) * 0.02)}
    save_dit_adapter(dit, lora, root / "layert2v" / ADAPTER, lora_alpha=2.0)
    shutil.rmtree(parts)
    return root
