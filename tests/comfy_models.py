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


# ---- the native path: a Wan2.1 file ComfyUI's own loader reads (128-wide heads, freq 256, text 4096) + an adapter

NATIVE_DIT = "layert2v_tiny_wan_t2v.safetensors"
NATIVE_ADAPTER = "layert2v_tiny_wan_adapter.safetensors"
NATIVE_VAE = "layert2v_tiny_vae.safetensors"
NATIVE_ALPHA_VAE = "layert2v_tiny_alpha_vae.safetensors"
NATIVE_TEXT_ENCODER = "layert2v_tiny_umt5_4096.safetensors"
# ComfyUI's Wan detection fixes freq_dim 256 and text_dim 4096 and reads heads as dim / 128.
NATIVE_DIT_CONFIG = dict(dim=128, ffn_dim=256, freq_dim=256, num_heads=1, num_layers=2, text_dim=4096)


def populate_native_models(root: Path, num_foregrounds: int = 2, seed: int = 0) -> Path:
    """root/{diffusion_models,layert2v,vae,text_encoders}/... for Load Diffusion Model + Apply LayerT2V; returns root.

    The DiT file is a plain Wan2.1 T2V state dict in the original key layout (no LayerT2V tensors); the adapter has
    LoRA on attention, FFN, embeddings and head, and a LayerAdaLN table large enough to change every layer."""
    from layert2v_core.dit import WanDiT
    from layert2v_core.weights import save_weights_atomic
    from train.tiny_models import example_sentences, tiny_dit_config, write_text_encoder

    torch.manual_seed(seed)
    dit = WanDiT(tiny_dit_config(num_foregrounds=num_foregrounds, **NATIVE_DIT_CONFIG))
    plain = {k: v.contiguous() for k, v in dit.state_dict().items() if not k.startswith("layer_adaln.")}
    (root / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_weights_atomic(plain, root / "diffusion_models" / NATIVE_DIT)

    generator = torch.Generator().manual_seed(seed + 1)
    dit.layer_adaln.layer_modulation.data.normal_(0, 0.2, generator=generator)
    lora = {}
    for module in ("blocks.0.self_attn.q", "blocks.1.cross_attn.k", "blocks.0.ffn.0", "text_embedding.0",
                   "head.head"):
        weight = dit.get_submodule(module).weight
        lora[module] = (torch.randn(4, weight.shape[1], generator=generator) * 0.1,
                        torch.randn(weight.shape[0], 4, generator=generator) * 0.1)
    (root / "layert2v").mkdir(parents=True, exist_ok=True)
    save_dit_adapter(dit, lora, root / "layert2v" / NATIVE_ADAPTER, lora_alpha=4.0)

    parts = write_model_folder(root / "_tiny_native", seed=seed, num_foregrounds=num_foregrounds)
    for relative, source in {f"vae/{NATIVE_VAE}": parts / "vae.safetensors",
                             f"layert2v/{NATIVE_ALPHA_VAE}": parts / "mask_vae.safetensors"}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / relative)
    shutil.rmtree(parts)
    write_text_encoder(root / "text_encoders" / NATIVE_TEXT_ENCODER, example_sentences(), d_model=4096, layers=1,
                       heads=2, d_kv=8, d_ff=16, seed=seed)
    return root
