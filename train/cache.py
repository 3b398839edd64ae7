"""Precomputed training inputs: serialized VAE latents, mattes and T5 outputs in safetensors shards.

Encoding every clip with the VAE and every caption with umt5 at each step dominates a LayerT2V training step;
done once here, stage 2/3 read the shards instead (give the cache folder as --data) and never load the text
encoder. The frame window of each clip is fixed at caching time.

    python train/cache.py --config train/configs/stage2_wan13b.yaml --data VidLayer/ --model wan2.1/ \
        --mask-vae runs/stage1/final/mask_vae.safetensors --output-dir cache/
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from layert2v_core.atomic import write_json  # noqa: E402
from layert2v_core.layered_latent import encode_layers  # noqa: E402
from layert2v_core.layers import LayerSpec  # noqa: E402
from layert2v_core.mask_modes import VAE_LORA, load_mask_mode  # noqa: E402
from layert2v_core.model_folder import find_components  # noqa: E402
from layert2v_core.text import encode_layer_prompts, load_text_encoder  # noqa: E402
from layert2v_core.vae import frozen_vae_dtype, load_vae  # noqa: E402
from layert2v_core.weights import file_hash, save_weights_atomic  # noqa: E402
from safetensors import safe_open  # noqa: E402

INDEX = "cache.json"
FORMAT = "layert2v-training-cache"
TEXT_ROWS = 512


def is_cache(path: str | os.PathLike) -> bool:
    return (Path(path) / INDEX).is_file()


def mask_parts(cfg) -> tuple[str, ...]:
    """The files the alpha codec of cfg.mask_mode needs: the stage-1 alpha VAE, or none for vae / downsample."""
    return ("mask_vae",) if cfg.mask_mode in ("", VAE_LORA) else ()


def training_mask_codec(vae, cfg, path) -> torch.nn.Module:
    """The frozen alpha codec the DiT's mask segments are encoded with (cfg.mask_mode)."""
    return load_mask_mode(vae, cfg.mask_mode or VAE_LORA, path if mask_parts(cfg) else None).requires_grad_(False)


@torch.no_grad()
def build_cache(cfg, out: str | os.PathLike, shard_size: int = 64, device="cpu") -> Path:
    """Encode every usable sample of cfg.data once; returns the cache folder."""
    from train.data import LayeredVideoDataset, collate_layered, layer_videos

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = find_components(cfg.model or None, ("vae", *mask_parts(cfg), "text_encoder"), vae=cfg.vae or None,
                            mask_vae=cfg.mask_vae or None, text_encoder=cfg.text_encoder or None)
    vae = load_vae(parts.vae, dtype=frozen_vae_dtype(device), device=device)
    mask_vae = training_mask_codec(vae, cfg, parts.mask_vae)
    text = load_text_encoder(parts.text_encoder, device=device)
    dataset = LayeredVideoDataset(cfg.data, cfg.frames, cfg.height, cfg.width, cfg.frame_sampling, cfg.seed,
                                  cfg.max_foregrounds)
    entries, shard, shard_index = [], {}, 0

    def flush() -> None:
        nonlocal shard, shard_index
        if shard:
            save_weights_atomic(shard, out / f"shard-{shard_index:05d}.safetensors")
            shard, shard_index = {}, shard_index + 1

    for index in range(len(dataset)):
        item = dataset[index]
        n = item["alphas"].shape[0]
        spec = LayerSpec(n)
        layers = layer_videos(collate_layered([item]))
        latent = encode_layers(vae, mask_vae, spec, {k: v.to(device) for k, v in layers.items()})
        captions = item["captions"]
        context = encode_layer_prompts(text, spec, captions["full"], captions["background"],
                                       list(captions["foregrounds"]))
        rows = int(context.prompt_lens.sum())
        key = f"{len(entries)}"
        shard[f"{key}.latent"] = latent[0].float().cpu()
        shard[f"{key}.alphas"] = (item["alphas"] * 255).round().to(torch.uint8)
        shard[f"{key}.context"] = context.context[0, :rows].float().cpu()
        shard[f"{key}.prompt_lens"] = context.prompt_lens[0].cpu()
        entries.append({"id": item["id"], "key": key, "shard": f"shard-{shard_index:05d}.safetensors",
                        "num_foregrounds": n, "captions": captions})
        if len(shard) >= 4 * shard_size:
            flush()
    flush()
    write_json(out / INDEX, {
        "format": FORMAT, "samples": entries, "frames": cfg.frames, "height": cfg.height, "width": cfg.width,
        "skipped": dict(dataset.skipped),
        "mask_mode": mask_vae.mask_mode,
        "encoders": {"vae": file_hash(parts.vae), "mask_vae": file_hash(parts.mask_vae) if mask_parts(cfg) else None,
                     "text_encoder": file_hash(parts.text_encoder)}})
    return out


class CachedLayers(torch.utils.data.Dataset):
    """A cache folder as a dataset; items carry 'latent', 'alphas', 'context', 'prompt_lens', 'id'."""

    def __init__(self, folder: str | os.PathLike, max_foregrounds: int = 3, mask_mode: str | None = None):
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX).read_text())
        if index.get("format") != FORMAT:
            raise SystemExit(f"{self.folder} is not a training cache made by train/cache.py")
        cached_mode = index.get("mask_mode", VAE_LORA)  # caches written before the modes: the alpha VAE's
        if mask_mode is not None and cached_mode != mask_mode:
            raise SystemExit(f"{self.folder} holds mattes encoded in the '{cached_mode}' mask mode, but this run "
                             f"trains in '{mask_mode}'; rebuild the cache with --mask-mode {mask_mode} or train "
                             f"with --mask-mode {cached_mode}")
        self.frames, self.height, self.width = index["frames"], index["height"], index["width"]
        self.samples = [s for s in index["samples"] if s["num_foregrounds"] <= max_foregrounds]
        if not self.samples:
            raise SystemExit(f"{self.folder} holds no sample with at most {max_foregrounds} foreground(s)")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """The frame windows were fixed when the cache was made."""

    def foreground_counts(self) -> list[int]:
        return [s["num_foregrounds"] for s in self.samples]

    def __getitem__(self, index: int) -> dict:
        entry = self.samples[index]
        with safe_open(str(self.folder / entry["shard"]), framework="pt") as f:
            item = {name: f.get_tensor(f"{entry['key']}.{name}")
                    for name in ("latent", "alphas", "context", "prompt_lens")}
        item["alphas"] = item["alphas"].float() / 255
        item["id"] = entry["id"]
        return item


def collate_cached(batch: list[dict]) -> dict:
    """Stack a batch of one N; contexts are zero-padded to a common length (at least 512 rows, as Wan pads)."""
    counts = {item["alphas"].shape[0] for item in batch}
    if len(counts) > 1:
        raise ValueError(f"a batch mixes {sorted(counts)} foregrounds; batch by foreground count")
    rows = max(TEXT_ROWS, *(item["context"].shape[0] for item in batch))
    return {"latent": torch.stack([item["latent"] for item in batch]),
            "alphas": torch.stack([item["alphas"] for item in batch]),
            "context": torch.stack([F.pad(item["context"], (0, 0, 0, rows - item["context"].shape[0]))
                                    for item in batch]),
            "prompt_lens": torch.stack([item["prompt_lens"] for item in batch]),
            "id": [item["id"] for item in batch]}


def main(argv: list[str] | None = None) -> int:
    from train.config import parse_config
    cfg = parse_config(__doc__, argv, {"output_dir": "cache"})
    folder = build_cache(cfg, cfg.output_dir)
    print(f"wrote {folder / INDEX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
