"""umt5-xxl text encoding for Wan2.1 and LayerT2V.

Plain Wan: each prompt is tokenised with EOS (cut at 512 tokens), encoded, and only its real tokens' outputs are
kept, zero-padded to 512 rows -> [B, 512, dim].

LayerT2V: every prompt of a sample is encoded on its own; the real tokens are concatenated in `LayerSpec.prompts`
order [full | fg_1 .. fg_N | bg] and zero-padded to at least 512 rows, with per-prompt lengths for the DiT's routing.
The negative side repeats the negative prompt once per prompt slot. Empty fg/bg prompts become
`DEFAULT_FOREGROUND_PROMPT` / `DEFAULT_BACKGROUND_PROMPT` (the official LayerT2V inference defaults) and an empty
negative prompt becomes Wan's own default, `WAN_NEGATIVE_PROMPT`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .layers import LayerSpec
from .text_cache import TextEmbeddingCache
from .text_checkpoints import build_encoder, find_encoder_files
from .text_tokenizer import PAD_ID, TEXT_LEN, PromptTokenizer, Tokenized
from .weights import file_hash

# Wan2.1's default negative prompt (wan/configs/shared_config.py, sample_neg_prompt), kept verbatim.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# What the official LayerT2V inference encodes for an empty foreground / background prompt.
DEFAULT_FOREGROUND_PROMPT = "foreground object"
DEFAULT_BACKGROUND_PROMPT = "background scene"


class TextEncoder:
    """A umt5 encoder (transformers' UMT5EncoderModel) with its tokenizer; see `load_text_encoder`."""

    def __init__(self, model, tokenizer: PromptTokenizer, *, layout: str = "in memory",
                 hashed_paths: Sequence[Path] = (), cache: TextEmbeddingCache | None = None, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.cache = cache
        self.batch_size = batch_size
        self._hashed_paths = tuple(hashed_paths)
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def fingerprint(self) -> str:
        """Content hash of the weights and tokenizer, the cache's key; computed on first use (reads the files)."""
        if self._fingerprint is None:
            if not self._hashed_paths:
                raise ValueError("this encoder was not loaded from files, so it has no fingerprint for a cache")
            parts = "|".join(file_hash(p) for p in self._hashed_paths)
            self._fingerprint = hashlib.sha256(parts.encode()).hexdigest()[:16]
        return self._fingerprint

    @property
    def cache_key(self) -> str:
        """The cache's encoder key: the files' fingerprint and the compute dtype (bf16 and fp32 results differ)."""
        return f"{self.fingerprint}:{str(self.dtype).removeprefix('torch.')}"

    def to(self, device) -> "TextEncoder":
        self.model.to(device)
        return self

    def tokenize(self, prompts: Sequence[str]) -> list[Tokenized]:
        return [self.tokenizer(p) for p in _check_prompts(prompts)]

    def encode_tokens(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Real-token embeddings [tokens_i, dim] of each prompt (EOS included); identical prompts are encoded once."""
        unique = list(dict.fromkeys(_check_prompts(prompts)))
        tokens = dict(zip(unique, self.tokenize(unique)))
        found: dict[str, torch.Tensor] = {}
        if self.cache is not None:
            for text in unique:
                hit = self.cache.get(self.cache_key, text)
                if hit is not None and hit.shape == (len(tokens[text].ids), self.dim):
                    found[text] = hit.to(self.device, self.dtype)
        todo = [t for t in unique if t not in found]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for text, out in zip(chunk, self._run([tokens[t].ids for t in chunk])):
                found[text] = out
                if self.cache is not None:
                    self.cache.put(self.cache_key, text, out)
        return [found[p] for p in prompts]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain Wan encoding: ([B, 512, dim] with zeros past each prompt's real tokens, lengths [B])."""
        real = self.encode_tokens(prompts)
        lengths = torch.tensor([len(r) for r in real], dtype=torch.long, device=self.device)
        return _pad_rows(real, TEXT_LEN, self.dim, self.dtype, self.device), lengths

    @torch.inference_mode()
    def _run(self, id_lists: list[tuple[int, ...]]) -> list[torch.Tensor]:
        # Pad to 512 with a mask exactly as Wan (and ComfyUI) do; a shorter pad is equal in exact arithmetic but
        # rounds differently, and these embeddings should match theirs to the last bit the kernels allow.
        ids = torch.full((len(id_lists), TEXT_LEN), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(id_lists), TEXT_LEN), dtype=torch.long)
        for row, seq in enumerate(id_lists):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        hidden = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        return [hidden[row, :len(seq)].clone() for row, seq in enumerate(id_lists)]


def load_text_encoder(path: str | os.PathLike, dtype: torch.dtype | None = None, device="cpu", *,
                      tokenizer: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
                      ) -> TextEncoder:
    """Load a umt5-xxl encoder from a Hugging Face folder, Wan's .pth, or ComfyUI's fp16 / scaled-fp8 file.

    dtype None keeps the file's dtype (fp8 files compute in bfloat16). `tokenizer` overrides where the tokenizer
    comes from (ComfyUI files carry their own; Wan's .pth looks for google/umt5-xxl beside it). `cache_dir` turns
    on the on-disk embedding cache.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    files = find_encoder_files(path, tokenizer)
    model = build_encoder(files, dtype, torch.device(device))
    cache = TextEmbeddingCache(cache_dir) if cache_dir is not None else None
    return TextEncoder(model, files.tokenizer, layout=files.layout, hashed_paths=files.hashed_paths, cache=cache)


# ---- LayerT2V: several prompts per sample ----

@dataclass
class LayeredContext:
    """Routing-ready text for the layered DiT; context rows past sum(prompt_lens) are zero."""

    context: torch.Tensor  # [B, L, dim], L = max(512, longest total of either side)
    prompt_lens: torch.Tensor  # [B, N + 2] long, in LayerSpec.prompts order
    negative_context: torch.Tensor  # [B, L, dim]: the negative prompt once per prompt slot
    negative_prompt_lens: torch.Tensor  # [B, N + 2] long
    prompts: tuple[tuple[str, ...], ...]  # per sample, the texts encoded, in LayerSpec.prompts order
    negative_prompts: tuple[str, ...]  # per sample


def layer_prompts(spec: LayerSpec, full: str, bg: str, foregrounds: Sequence[str]) -> tuple[str, ...]:
    """The texts to encode, in `spec.prompts` order, with empty fg/bg prompts replaced by the defaults."""
    _check_prompts([full, bg, *foregrounds])
    if len(foregrounds) != spec.num_foregrounds:
        raise ValueError(f"this layout has {spec.num_foregrounds} foreground(s) but {len(foregrounds)} foreground "
                         f"prompt(s) were given; give one prompt per foreground")
    by_slot = {"full": full, "bg": bg if bg.strip() else DEFAULT_BACKGROUND_PROMPT}
    for number, text in enumerate(foregrounds, start=1):
        by_slot[f"fg{number}"] = text if text.strip() else DEFAULT_FOREGROUND_PROMPT
    return tuple(by_slot[slot] for slot in spec.prompts)


def encode_layer_prompts(encoder: TextEncoder, spec: LayerSpec, full: str, bg: str, foregrounds: Sequence[str],
                         negative: str = "") -> LayeredContext:
    """Encode one sample's prompts for the layered DiT (batch of 1; see `batch_layered_contexts`)."""
    prompts = layer_prompts(spec, full, bg, foregrounds)
    negative = negative_prompt(negative)
    *positive, negative_tokens = encoder.encode_tokens([*prompts, negative])
    return pack_layer_contexts(spec, prompts, positive, negative, negative_tokens)


def negative_prompt(text: str) -> str:
    """The negative prompt to encode: `text`, or Wan's default when it is empty."""
    _check_prompts([text])
    return text if text.strip() else WAN_NEGATIVE_PROMPT


def pack_layer_contexts(spec: LayerSpec, prompts: Sequence[str], positive: Sequence[torch.Tensor], negative: str,
                        negative_tokens: torch.Tensor, min_rows: int = TEXT_LEN) -> LayeredContext:
    """Pack per-prompt real-token embeddings [tokens_i, dim] (in `spec.prompts` order) into a LayeredContext.

    Whatever encoded them (our TextEncoder, ComfyUI's CLIP), the layout is the same: real tokens back to back,
    zero rows after, at least `min_rows` rows; the negative side repeats `negative_tokens` once per prompt slot.
    """
    if len(positive) != spec.num_prompts or len(prompts) != spec.num_prompts:
        raise ValueError(f"expected {spec.num_prompts} prompt embeddings for {list(spec.prompts)}, got "
                         f"{len(positive)} embeddings and {len(prompts)} texts")
    dims = {t.shape[-1] for t in [*positive, negative_tokens]}
    if len(dims) != 1 or any(t.dim() != 2 for t in [*positive, negative_tokens]):
        raise ValueError(f"prompt embeddings must all be [tokens, dim] with one dim, got "
                         f"{[tuple(t.shape) for t in [*positive, negative_tokens]]}")
    dim = dims.pop()
    first = positive[0]
    negatives = [negative_tokens] * spec.num_prompts
    rows = max(min_rows, sum(len(p) for p in positive), sum(len(n) for n in negatives))
    context = _pad_rows([torch.cat(list(positive))], rows, dim, first.dtype, first.device)
    negative_context = _pad_rows([torch.cat(negatives)], rows, dim, first.dtype, first.device)
    result = LayeredContext(context, _lengths([positive], first.device), negative_context,
                            _lengths([negatives], first.device), (tuple(prompts),), (negative,))
    spec.check_prompt_lens(result.prompt_lens, rows)
    spec.check_prompt_lens(result.negative_prompt_lens, rows)
    return result


def batch_layered_contexts(items: Sequence[LayeredContext]) -> LayeredContext:
    """Stack samples of one layout into a batch, padding every context to the longest."""
    if not items:
        raise ValueError("no layered contexts to batch")
    if len({i.prompt_lens.shape[1] for i in items}) != 1:
        raise ValueError("cannot batch samples with different numbers of foregrounds; group them by layout")
    rows = max(i.context.shape[1] for i in items)

    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, rows - t.shape[1])) for t in tensors])

    return LayeredContext(
        stack([i.context for i in items]), torch.cat([i.prompt_lens for i in items]),
        stack([i.negative_context for i in items]), torch.cat([i.negative_prompt_lens for i in items]),
        sum((i.prompts for i in items), ()), sum((i.negative_prompts for i in items), ()))


# ---- helpers ----

def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("give a list of prompts, not a single string")
    prompts = list(prompts)
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {bad}")
    return prompts


def _pad_rows(parts: Sequence[torch.Tensor], rows: int, dim: int, dtype, device) -> torch.Tensor:
    out = torch.zeros((len(parts), rows, dim), dtype=dtype, device=device)
    for i, part in enumerate(parts):
        out[i, :len(part)] = part
    return out


def _lengths(per_sample: Sequence[Sequence[torch.Tensor]], device) -> torch.Tensor:
    return torch.tensor([[len(p) for p in sample] for sample in per_sample], dtype=torch.long, device=device)
