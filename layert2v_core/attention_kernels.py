"""Opt-in self-attention kernels for the DiT. The default is exact SDPA (flash / cuDNN / memory-efficient on CUDA,
as PyTorch picks); SageAttention quantises q and k to int8 and is faster on recent GPUs, but not exact.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator

from . import dit


def sage_attention_available() -> bool:
    return importlib.util.find_spec("sageattention") is not None


@contextlib.contextmanager
def sage_self_attention() -> Iterator[None]:
    """Within the context every DiT self-attention runs SageAttention (cross-attention keeps SDPA: it has a mask)."""
    if not sage_attention_available():
        raise RuntimeError("SageAttention is not installed: pip install sageattention (CUDA only), or leave the "
                           "default exact attention")
    from sageattention import sageattn

    previous = dit.self_attention_kernel
    dit.self_attention_kernel = lambda q, k, v: sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    try:
        yield
    finally:
        dit.self_attention_kernel = previous
