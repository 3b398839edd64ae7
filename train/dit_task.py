"""Stages 2 and 3: the DiT learns layered generation (LoRA + LayerAdaLN; VAEs and text encoder frozen).

Loss (paper eq. 12): L_FM + λ_cons·L_cons + λ_mask·L_mask on the serialized latent [full | bg | fg_i | mask_i ...].
Stage 3 starts from a stage-2 adapter, grows the LayerAdaLN table for more foregrounds (new rows copied from the
single-foreground ones) and continues on multi-subject samples.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from layert2v_core.checkpoints import load_adapter, load_dit, save_dit, save_dit_adapter
from layert2v_core.layered_latent import encode_layers
from layert2v_core.layers import LayerSpec
from layert2v_core.model_folder import find_components
from layert2v_core.text import batch_layered_contexts, encode_layer_prompts, load_text_encoder, negative_prompt
from layert2v_core.vae import frozen_vae_dtype, load_vae

from .cache import CachedLayers, collate_cached, is_cache, mask_parts, training_mask_codec
from .config import TrainConfig
from .data import LayeredVideoDataset, collate_layered, layer_videos
from .losses import (consistency_loss, downsample_mask, flow_matching_loss, mask_reconstruction_loss, noisy_latent,
                     predicted_x0, sample_sigmas)

LAYER_ADALN = "layer_adaln.layer_modulation"


def add_lora(dit: torch.nn.Module, rank: int, alpha: float, targets: list[str]) -> torch.nn.Module:
    """Wrap the DiT with peft LoRA on `targets` and make LayerAdaLN trainable too."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    model = get_peft_model(dit, config)
    dit.layer_adaln.layer_modulation.requires_grad_(True)
    return model


def drop_text(context: torch.Tensor, prompt_lens: torch.Tensor, negative: torch.Tensor,
              dropped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Context [B, rows, dim] and prompt lengths [B, slots] with the `dropped` samples' prompts replaced by the
    negative prompt's tokens [n, dim] in every slot: the unconditional branch as guidance packs it at inference
    (text.pack_layer_contexts), so a model trained with some of it has a meaningful CFG."""
    if not bool(dropped.any()):
        return context, prompt_lens
    slots = prompt_lens.shape[1]
    packed = negative.to(context.device, context.dtype).repeat(slots, 1)
    context = F.pad(context, (0, 0, 0, max(0, packed.shape[0] - context.shape[1]))).clone()
    rows = dropped.to(context.device)
    context[rows] = 0
    context[rows, :packed.shape[0]] = packed
    prompt_lens = torch.as_tensor(prompt_lens).clone()
    prompt_lens[dropped.to(prompt_lens.device)] = negative.shape[0]
    return context, prompt_lens


def module_name(peft_name: str) -> str:
    """'base_model.model.blocks.0.self_attn.q.lora_A.default.weight' -> 'blocks.0.self_attn.q.lora_A.weight'."""
    return peft_name.removeprefix("base_model.model.").replace(".default.", ".")


def lora_pairs(values: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    downs = {m.group(1): v for k, v in values.items() if (m := re.fullmatch(r"(.+)\.lora_A\.weight", k))}
    return {name: (down, values[f"{name}.lora_B.weight"]) for name, down in downs.items()}


def foreground_weight(latent_alphas: list[torch.Tensor], weight: float, segments: int) -> torch.Tensor | None:
    """Flow-matching weights over a serialized latent: 1 + weight x the union of the foregrounds' latent alphas, the
    same map in every segment (a small foreground is a few latent positions; unweighted, its error is lost in the
    background's); None for weight 0 (the paper's loss)."""
    if weight == 0:
        return None
    union = torch.stack(latent_alphas).amax(0)  # [B, 1, T', h, w]
    return (1 + weight * union).repeat(1, 1, segments, 1, 1)


class DiTTask:
    name = "stage 2: layered generation"

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        cached = is_cache(cfg.data)  # precomputed latents and T5 outputs: no text encoder needed
        needed = ("dit", "vae", *mask_parts(cfg)) + (() if cached and not cfg.text_dropout else ("text_encoder",))
        parts = find_components(cfg.model or None, needed, dit=cfg.dit or None, vae=cfg.vae or None,
                                mask_vae=cfg.mask_vae or None, text_encoder=cfg.text_encoder or None)
        dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        self.dit = load_dit(parts.dit, dtype=dtype, device=device, rope=cfg.rope)
        self.dit.config.routing_policy = cfg.routing_policy
        self.dit.extend_layer_categories(cfg.max_foregrounds)
        self.dit.gradient_checkpointing = cfg.gradient_checkpointing
        self.vae = load_vae(parts.vae, dtype=frozen_vae_dtype(device), device=device)
        self.mask_vae = training_mask_codec(self.vae, cfg, parts.mask_vae)
        self.text = None if cached else load_text_encoder(parts.text_encoder, device=device)
        self.negative = None  # the negative prompt's tokens, encoded once, when some samples train without text
        if cfg.text_dropout > 0:
            encoder = self.text or load_text_encoder(parts.text_encoder, device=device)
            self.negative = encoder.encode_tokens([negative_prompt("")])[0]
        if cfg.lora_rank > 0:
            self.module = add_lora(self.dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        else:  # lora_rank 0: every DiT weight trains (a model trained from scratch, like the demo's)
            self.module = self.dit.requires_grad_(True)
        if cfg.adapter:
            self._start_from(cfg.adapter)
        if not cfg.layer_adaln:  # no per-layer modulation: every segment is told apart by its position alone
            self.dit.layer_adaln.layer_modulation.requires_grad_(False).zero_()
        if cached:
            self.dataset = CachedLayers(cfg.data, cfg.max_foregrounds, self.mask_vae.mask_mode)
            self.collate = collate_cached
        else:
            self.dataset = LayeredVideoDataset(cfg.data, cfg.frames, cfg.height, cfg.width, cfg.frame_sampling,
                                               cfg.seed, cfg.max_foregrounds)
            self.collate = collate_layered
        self.base_path = parts.dit

    def _start_from(self, path: str) -> None:
        """Continue from an adapter of ours (stage 3 from stage 2): its LoRA and LayerAdaLN rows."""
        adapter = load_adapter(path)
        params = {module_name(k): p for k, p in self.module.named_parameters()}
        for name, (down, up, _) in adapter.lora.items():
            for suffix, value in (("lora_A.weight", down), ("lora_B.weight", up)):
                key = f"{name}.{suffix}"
                if key not in params or params[key].shape != value.shape:
                    raise SystemExit(f"{path}: {key} does not match this run's LoRA (rank {self.cfg.lora_rank}, "
                                     f"targets {self.cfg.lora_targets}); use the same lora_rank/targets as stage 2")
                with torch.no_grad():
                    params[key].copy_(value)
        if LAYER_ADALN in adapter.tensors:
            rows = adapter.tensors[LAYER_ADALN]
            table = self.dit.layer_adaln.layer_modulation
            with torch.no_grad():
                table[: rows.shape[0]] = rows.to(table.dtype)
                for row, source in enumerate(LayerSpec(self.cfg.max_foregrounds).category_source_rows()):
                    if row >= rows.shape[0]:
                        table[row] = rows[source].to(table.dtype)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {module_name(k): p for k, p in self.module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def encode(self, batch: dict, spec: LayerSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Serialized latent x0 [B, 16, S*T', h, w], text context and prompt lengths of a batch (data or cache)."""
        device = self.dit.device
        if "latent" in batch:
            return batch["latent"].to(device), batch["context"].to(device), batch["prompt_lens"]
        # Foregrounds: the samples' own clips, else full x alpha (the paper's), which encode_layers derives.
        layers = {name: video.to(device) for name, video in layer_videos(batch).items()}
        latent = encode_layers(self.vae, self.mask_vae, spec, layers)
        captions = batch["captions"]
        text = batch_layered_contexts([
            encode_layer_prompts(self.text, spec, full, bg, fgs)
            for full, bg, fgs in zip(captions["full"], captions["background"], captions["foregrounds"])])
        return latent, text.context, text.prompt_lens

    def loss(self, module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        cfg, device = self.cfg, self.dit.device
        spec = LayerSpec(batch["alphas"].shape[1], cfg.routing_policy)
        x0, context, prompt_lens = self.encode(batch, spec)
        if self.negative is not None:
            dropped = torch.rand(x0.shape[0], generator=generator) < cfg.text_dropout
            context, prompt_lens = drop_text(context, prompt_lens, self.negative, dropped)
        sigma = sample_sigmas(x0.shape[0], generator, cfg.t_mean, cfg.t_std, cfg.t_shift).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        z_t = noisy_latent(x0, noise, sigma)
        velocity = module(z_t, sigma * 1000, context.to(device), layer_spec=spec, prompt_lens=prompt_lens).float()
        predicted, target = spec.split(predicted_x0(z_t, velocity, sigma)), spec.split(x0)
        _, _, frames, height, width = target["full"].shape
        alphas = batch["alphas"].to(device)
        small = [downsample_mask(alphas[:, i], frames, height, width) for i in range(spec.num_foregrounds)]
        l_fm = flow_matching_loss(velocity, x0, noise, foreground_weight(small, cfg.foreground_weight, len(target)))
        fgs = [predicted[f"fg{i + 1}"] for i in range(spec.num_foregrounds)]
        l_cons = consistency_loss(fgs, predicted["bg"], target["full"], small)
        l_mask = torch.zeros((), device=device)
        if cfg.lambda_mask > 0:  # decoding every mask through the alpha VAE is most of a small model's step
            l_mask = sum(mask_reconstruction_loss(self.mask_vae.decode(predicted[f"mask{i + 1}"], clamp=False),
                                                  alphas[:, i], cfg.lambda_grad)
                         for i in range(spec.num_foregrounds)) / spec.num_foregrounds
        loss = l_fm + cfg.lambda_cons * l_cons + cfg.lambda_mask * l_mask
        return loss, {"fm": l_fm.item(), "cons": l_cons.item(), "mask": l_mask.item()}

    def export(self, folder: Path, values: dict[str, torch.Tensor]) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        if self.cfg.lora_rank == 0:
            with torch.no_grad():
                for name, param in self.dit.named_parameters():
                    if name in values:  # a frozen table keeps its value
                        param.copy_(values[name])
            save_dit(self.dit, folder / "dit.safetensors")
            return [folder / "dit.safetensors"]
        adapter = folder / "adapter.safetensors"
        save_dit_adapter(self.dit, lora_pairs(values), adapter, self.cfg.lora_alpha,
                         layer_modulation=values[LAYER_ADALN],
                         extra={"stage": self.name, "max_foregrounds": self.cfg.max_foregrounds,
                                "mask_mode": self.mask_vae.mask_mode})
        written = [adapter]
        if self.cfg.export_merged:
            merged = load_dit(self.base_path, dtype=torch.float32, adapter=adapter)
            save_dit(merged, folder / "dit_merged.safetensors")
            written.append(folder / "dit_merged.safetensors")
        return written


class MultiForegroundTask(DiTTask):
    name = "stage 3: more foregrounds"

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu"):
        if not cfg.adapter and cfg.lora_rank > 0:
            raise SystemExit("stage 3 continues from a stage-2 adapter: give --adapter runs/stage2/final/"
                             "adapter.safetensors (or, for full-weight training, --lora-rank 0 and --dit the "
                             "stage-2 dit.safetensors)")
        super().__init__(cfg, device)
