"""Finding and reading a umt5-xxl encoder in the layouts users have, into transformers' UMT5EncoderModel.

Layouts (detected from the contents, not the file name):
- a Hugging Face folder (`google/umt5-xxl`, or diffusers' `text_encoder/` with `tokenizer/` beside it):
  config.json + safetensors in transformers' names; decoder and LM-head tensors of a full umt5 are skipped;
- Wan's `models_t5_umt5-xxl-enc-bf16.pth`: Wan's own module names (`blocks.N.attn.q`, `ffn.gate.0`, ...), with a
  tokenizer folder beside it (Wan's release ships it as `google/umt5-xxl/`);
- ComfyUI's `umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: transformers' names (any
  prefix accepted), the sentencepiece model as the uint8 tensor `spiece_model`, and for scaled fp8 a `scaled_fp8`
  marker plus per-weight `.scale_weight` tensors (dequantised by `weights.read_tensor`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .text_tokenizer import PromptTokenizer, is_tokenizer_folder
from .weights import (FP8_DTYPES, CheckpointError, WeightSource, assign_weights, is_side_tensor, open_weights,
                      read_tensor)

HF_FOLDER = "Hugging Face folder"
WAN_PTH = "Wan .pth"
COMFY_FILE = "ComfyUI single file"

SPIECE_KEY = "spiece_model"  # ComfyUI's copy of the sentencepiece model, as raw bytes in a uint8 tensor
FINAL_NORM = "encoder.final_layer_norm.weight"
EMBEDDING = "shared.weight"
TIED_EMBEDDING = "encoder.embed_tokens.weight"  # the same tensor as shared.weight in transformers' models
_BLOCK = "encoder.block.{}."
_BLOCK_INDEX = re.compile(r"encoder\.block\.(\d+)\.")

# Wan's T5Encoder names -> transformers' UMT5EncoderModel names. In Wan's feed-forward, `gate` is the GELU branch
# and `fc1` the linear branch multiplied with it, which transformers calls wi_0 and wi_1.
_WAN_TOP_LEVEL = {"token_embedding.weight": EMBEDDING, "norm.weight": FINAL_NORM}
_WAN_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
# Where Wan's release and diffusers' layout keep the tokenizer, relative to the weights' folder.
_TOKENIZER_NEIGHBOURS = ("google/umt5-xxl", "umt5-xxl", "tokenizer", ".")


def wan_key_to_transformers(key: str) -> str | None:
    """transformers' name of a tensor in Wan's umt5 encoder file, or None for a name Wan's encoder does not have."""
    if key in _WAN_TOP_LEVEL:
        return _WAN_TOP_LEVEL[key]
    match = _WAN_BLOCK_KEY.fullmatch(key)
    if match and match.group(2) in _WAN_BLOCK:
        return _BLOCK.format(match.group(1)) + _WAN_BLOCK[match.group(2)]
    return None


@dataclass
class EncoderFiles:
    """What `find_encoder_files` learnt about a checkpoint, before any weight is read."""

    path: Path
    layout: str
    source: WeightSource
    file_keys: dict[str, str]  # model key -> key in the file
    config: "UMT5Config"  # noqa: F821 (transformers is imported lazily)
    tokenizer: PromptTokenizer
    stored_dtype: torch.dtype  # the dtype the weights would compute in by default
    hashed_paths: tuple[Path, ...]  # what identifies this encoder: weights, plus a separate tokenizer folder


def find_encoder_files(path: str | Path, tokenizer: str | Path | None = None) -> EncoderFiles:
    """Detect the layout of `path`, map its names, infer the config and find the tokenizer; reads no weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"umt5 text encoder not found: {path}")
    if path.is_dir():
        return _hf_folder(path, tokenizer)
    source = open_weights(path)
    if "token_embedding.weight" in source and any(k.startswith("blocks.") for k in source):
        return _wan_file(path, source, tokenizer)
    prefix = _transformers_prefix(path, source)
    return _comfy_file(path, source, prefix, tokenizer)


def build_encoder(files: EncoderFiles, dtype: torch.dtype | None, device) -> "UMT5EncoderModel":  # noqa: F821
    """Build the model on the meta device and fill it tensor by tensor, straight into `dtype` on `device`."""
    from transformers import UMT5EncoderModel

    dtype = dtype or files.stored_dtype
    with torch.device("meta"):
        model = UMT5EncoderModel(files.config)
    # The stack's embedding is tied to `shared`; detach it so the 1B-parameter table is assigned once, then re-tie.
    model.encoder.embed_tokens = None
    readers = {name: (lambda k=key: read_tensor(files.source, k, dtype)) for name, key in files.file_keys.items()}
    assign_weights(model, readers, dtype=dtype, device=device, fmt=files.layout, path=files.path)
    model.encoder.embed_tokens = model.shared
    return model.eval().requires_grad_(False)


# ---- layouts ----

def _hf_folder(folder: Path, tokenizer: str | Path | None) -> EncoderFiles:
    from transformers import UMT5Config

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} is a folder without config.json; give a Hugging Face umt5 folder (as "
                              f"google/umt5-xxl) or the path of a single .pth / .safetensors file")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "umt5":
        raise CheckpointError(f"{config_file} describes a {model_type!r} model; Wan2.1 needs umt5-xxl "
                              f"(model_type 'umt5')")
    config = UMT5Config.from_pretrained(str(folder))
    source = open_weights(folder)
    keys = _transformers_keys(source, prefix="")
    tok_folder = _find_tokenizer_folder(folder, tokenizer, neighbours=(".", "../tokenizer"))
    hashed = (folder,) if tok_folder.resolve() == folder.resolve() else (folder, tok_folder)
    stored = _stored_dtype(folder, source, keys)
    return EncoderFiles(folder, HF_FOLDER, source, keys, config, PromptTokenizer.from_folder(tok_folder), stored,
                        hashed)


def _wan_file(path: Path, source: WeightSource, tokenizer: str | Path | None) -> EncoderFiles:
    keys = {}
    for key in source:
        keys[wan_key_to_transformers(key) or key] = key  # unknown names stay as they are and are reported later
    config = _infer_config(path, source, keys)
    tok_folder = _find_tokenizer_folder(path.parent, tokenizer, _TOKENIZER_NEIGHBOURS)
    return EncoderFiles(path, WAN_PTH, source, keys, config, PromptTokenizer.from_folder(tok_folder),
                        _stored_dtype(path, source, keys), (path, tok_folder))


def _comfy_file(path: Path, source: WeightSource, prefix: str, tokenizer: str | Path | None) -> EncoderFiles:
    keys = _transformers_keys(source, prefix)
    config = _infer_config(path, source, keys)
    spiece = next((k for k in (prefix + SPIECE_KEY, SPIECE_KEY) if k in source), None)
    if tokenizer is None and spiece is not None:
        model_bytes = source[spiece].numpy().tobytes()
        tok = PromptTokenizer.from_sentencepiece_bytes(model_bytes, f"{path} ({SPIECE_KEY})")
        hashed = (path,)
    else:
        tok_folder = _find_tokenizer_folder(path.parent, tokenizer, _TOKENIZER_NEIGHBOURS, missing=SPIECE_KEY)
        tok, hashed = PromptTokenizer.from_folder(tok_folder), (path, tok_folder)
    return EncoderFiles(path, COMFY_FILE, source, keys, config, tok, _stored_dtype(path, source, keys), hashed)


# ---- helpers ----

def _transformers_prefix(path: Path, source: WeightSource) -> str:
    """The prefix before transformers' encoder names in a single file ('' in ComfyUI's own files)."""
    prefixes = sorted(k[: -len(FINAL_NORM)] for k in source if k.endswith(FINAL_NORM))
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    if len(prefixes) != 1:
        sample = sorted(source)[:5]
        raise CheckpointError(
            f"{path}: not a umt5 text encoder in Wan's or transformers' naming (no single "
            f"'{FINAL_NORM}' or 'token_embedding.weight'; first keys {sample}); expected Wan's "
            f"models_t5_umt5-xxl-enc-bf16.pth or ComfyUI's umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled .safetensors")
    return prefixes[0]


def _transformers_keys(source: WeightSource, prefix: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for key in source:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if is_side_tensor(name) or name == SPIECE_KEY or name.startswith(("decoder.", "lm_head.")):
            continue  # the tokenizer, and the parts of a full encoder-decoder umt5 that text encoding never uses
        if name == TIED_EMBEDDING:
            keys.setdefault(EMBEDDING, key)  # only when the file has no shared.weight of its own
            continue
        keys[name] = key
    return keys


def _infer_config(path: Path, source: WeightSource, keys: dict[str, str]):
    """UMT5Config from tensor shapes: vocab and width from the embedding, heads and buckets from the position bias."""
    from transformers import UMT5Config

    block0 = _BLOCK.format(0)
    needed = [EMBEDDING, block0 + _WAN_BLOCK["pos_embedding.embedding.weight"], block0 + _WAN_BLOCK["attn.q.weight"],
              block0 + _WAN_BLOCK["ffn.gate.0.weight"]]
    absent = [k for k in needed if k not in keys]
    if absent:
        raise CheckpointError(f"{path}: not a complete umt5 encoder; missing {absent}")
    layers = sorted({int(m.group(1)) for k in keys if (m := _BLOCK_INDEX.match(k))})
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{path}: encoder blocks {layers} are not numbered 0..{len(layers) - 1}; partial file?")
    if len(layers) > 1 and _BLOCK.format(1) + _WAN_BLOCK["pos_embedding.embedding.weight"] not in keys:
        raise CheckpointError(f"{path}: this is a T5 encoder (position bias only in its first block, as Flux's and "
                              f"SD3's t5xxl files), not umt5; Wan2.1 needs umt5-xxl, e.g. umt5_xxl_fp16.safetensors")
    vocab, width = _shape(path, source, keys[EMBEDDING])
    buckets, heads = _shape(path, source, keys[needed[1]])
    inner = _shape(path, source, keys[needed[2]])[0]
    ffn = _shape(path, source, keys[needed[3]])[0]
    return UMT5Config(vocab_size=vocab, d_model=width, d_kv=inner // heads, d_ff=ffn, num_heads=heads,
                      num_layers=len(layers), num_decoder_layers=len(layers), relative_attention_num_buckets=buckets,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)


_SAFETENSORS_DTYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "BF16": "bfloat16", "F16": "float16",
                       "F32": "float32", "F64": "float64"}


def _header(path: Path, source: WeightSource, key: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and stored dtype of one tensor; a safetensors file answers from its header without reading data."""
    if path.is_file() and path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            part = handle.get_slice(key)
            return tuple(part.get_shape()), getattr(torch, _SAFETENSORS_DTYPES.get(part.get_dtype(), "float32"))
    tensor = source[key]  # a .pth is memory-mapped, and a sharded folder is only asked for small tensors
    return tuple(tensor.shape), tensor.dtype


def _shape(path: Path, source: WeightSource, key: str) -> tuple[int, ...]:
    return _header(path, source, key)[0]


def _stored_dtype(path: Path, source: WeightSource, keys: dict[str, str]) -> torch.dtype:
    """The default compute dtype: the file's own, except fp8 files, which compute in bfloat16 as Wan's T5 does."""
    weight_dtype = _header(path, source, keys[_BLOCK.format(0) + _WAN_BLOCK["attn.q.weight"]])[1]
    if weight_dtype in FP8_DTYPES:
        return torch.bfloat16
    return _header(path, source, keys[FINAL_NORM])[1] if FINAL_NORM in keys else weight_dtype


def _find_tokenizer_folder(base: Path, explicit: str | Path | None, neighbours, missing: str | None = None) -> Path:
    if explicit is not None:
        folder = Path(explicit)
        if not is_tokenizer_folder(folder):
            raise FileNotFoundError(f"tokenizer folder {folder} has no tokenizer.json or spiece.model")
        return folder
    for rel in neighbours:
        if is_tokenizer_folder(base / rel):
            return base / rel
    looked = ", ".join(str(base / rel) for rel in neighbours)
    lacking = f"has no '{missing}' tensor and " if missing else ""
    raise FileNotFoundError(
        f"the umt5 weights in {base} {lacking}no tokenizer was found beside them (looked in {looked}); put the "
        f"google/umt5-xxl tokenizer folder from the Wan2.1 release there, or pass tokenizer=<folder with "
        f"tokenizer.json or spiece.model>")
