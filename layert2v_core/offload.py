"""Block-by-block offload: the DiT's transformer blocks live on the offload device and visit the compute device one
at a time, so a small card holds the embeddings, the head and a single block instead of the whole model.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def blocks_on_demand(model: nn.Module, blocks: nn.ModuleList, device: torch.device | str,
                     offload_device: torch.device | str = "cpu") -> Iterator[nn.Module]:
    """Within the context, `model` minus `blocks` sits on `device`; each block moves there just for its forward."""
    device, offload_device = torch.device(device), torch.device(offload_device)
    blocks.to(offload_device)
    resident = [m for name, m in model.named_children() if m is not blocks]
    for module in resident:
        module.to(device)
    for name, param in model.named_parameters(recurse=False):
        param.data = param.data.to(device)

    def arrive(module: nn.Module, args) -> None:
        module.to(device)

    def leave(module: nn.Module, args, output) -> None:
        module.to(offload_device)

    hooks = []
    for block in blocks:
        hooks += [block.register_forward_pre_hook(arrive), block.register_forward_hook(leave)]
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        model.to(offload_device)
