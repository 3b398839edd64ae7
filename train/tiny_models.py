"""Tiny LayerT2V models built by the project's own code: a model folder that runs anywhere in seconds.

Used by the tests (random weights), by the node pack's tests, and as the starting point of the embedded demo model
(the trainers then fit it on synthetic data). Every part is written in the same files a real model uses, so the
loaders, the pipeline and the nodes see exactly what they see with Wan2.1.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file

from layert2v_core.checkpoints import save_dit
from layert2v_core.dit import DiTConfig, WanDiT
from layert2v_core.mask_vae import MaskVAE, MaskVAEConfig, save_mask_vae
from layert2v_core.vae import VAEConfig, WanVAE, save_vae

DEFAULT_WORDS = ("a red circle blue square green triangle yellow star moves left right up down over the "
                 "striped checkered gradient noise background sky field scene object white cyan orange").split()


def sentencepiece_model(sentences: Iterable[str], vocab_size: int = 128) -> bytes:
    """A umt5-style sentencepiece model (pad 0, eos 1, unk 2) trained on `sentences`."""
    import sentencepiece

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)), model_writer=buffer, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
        hard_vocab_limit=False)
    return buffer.getvalue()


def example_sentences(words: Iterable[str] = DEFAULT_WORDS, count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = list(words)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 10))) for _ in range(count)]


def write_text_encoder(path: str | os.PathLike, sentences: Iterable[str], d_model: int = 32, layers: int = 2,
                       heads: int = 2, seed: int = 0, d_kv: int | None = None, d_ff: int | None = None) -> Path:
    """A random umt5 encoder in ComfyUI's single-file layout, its tokenizer inside as `spiece_model`.

    d_kv / d_ff default to d_model / heads and 2 * d_model; small ones keep a 4096-wide (umt5-xxl-wide) encoder tiny."""
    from transformers import UMT5Config, UMT5EncoderModel

    model_bytes = sentencepiece_model(sentences)
    import sentencepiece
    vocab = sentencepiece.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()
    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv or d_model // heads, d_ff=d_ff or 2 * d_model,
                        num_layers=layers, num_heads=heads)
    model = UMT5EncoderModel(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state["spiece_model"] = torch.frombuffer(bytearray(model_bytes), dtype=torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def tiny_dit_config(text_dim: int = 32, num_foregrounds: int = 1, **overrides) -> DiTConfig:
    cfg = dict(dim=64, ffn_dim=128, freq_dim=32, num_heads=2, num_layers=2, text_dim=text_dim,
               num_layer_categories=2 + 2 * num_foregrounds)
    cfg.update(overrides)
    return DiTConfig(**cfg)


def tiny_vae_config(**overrides) -> VAEConfig:
    return VAEConfig(**{"dim": 8, "z_dim": 16, **overrides})


def write_model_folder(folder: str | os.PathLike, seed: int = 0, num_foregrounds: int = 1, text_dim: int = 32,
                       sentences: Iterable[str] | None = None, dit_overrides: dict | None = None) -> Path:
    """A complete random model folder (dit, vae, mask_vae, text_encoder) in the layout `find_components` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_dit(WanDiT(tiny_dit_config(text_dim, num_foregrounds, **(dit_overrides or {}))), folder / "dit.safetensors")
    vae = WanVAE(tiny_vae_config())
    save_vae(vae, folder / "vae.safetensors")
    save_mask_vae(MaskVAE(vae, MaskVAEConfig(lora_rank=4, lora_alpha=4, proj_hidden=16, proj_res_blocks=1,
                                             proj_use_attention=False)), folder / "mask_vae.safetensors")
    write_text_encoder(folder / "text_encoder.safetensors", sentences or example_sentences(), d_model=text_dim,
                       seed=seed)
    return folder
