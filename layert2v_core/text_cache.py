"""On-disk cache of prompt embeddings, keyed by (encoder fingerprint, prompt text), for the trainers.

One safetensors file per entry holds the prompt's real-token embeddings [tokens, dim]; its metadata repeats the key
so a hash collision or a stray file is never served. Files are written atomically, so parallel writers are safe.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .weights import save_weights_atomic

_TENSOR = "embedding"


class TextEmbeddingCache:
    """A folder of cached embeddings; `get` returns None on a miss, `put` stores one prompt's embeddings."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _file(self, encoder_hash: str, text: str) -> Path:
        digest = hashlib.sha256(f"{encoder_hash}\0{text}".encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def get(self, encoder_hash: str, text: str) -> torch.Tensor | None:
        file = self._file(encoder_hash, text)
        if not file.is_file():
            return None
        try:
            with safe_open(str(file), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("encoder") != encoder_hash or meta.get("text") != text:
                    return None
                return handle.get_tensor(_TENSOR)
        except (OSError, SafetensorError):  # a damaged entry is a miss; the next `put` replaces it
            return None

    def put(self, encoder_hash: str, text: str, embedding: torch.Tensor) -> None:
        save_weights_atomic({_TENSOR: embedding}, self._file(encoder_hash, text),
                            metadata={"encoder": encoder_hash, "text": text})
