"""Fully sharded training (torch FSDP2) for the loop: shard the model over the processes, checkpoint shard by shard.

Each block of a `blocks` list becomes its own FSDP unit and the task's module the root unit, so a process holds only
its shard of every weight between forwards; frozen base weights and trainable LoRA / LayerAdaLN tensors share units.
A checkpoint's tensors (trainable, EMA, optimizer) are written with torch.distributed.checkpoint, every process
writing its own shard; `full_values` gathers whole tensors for the final export.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from .checkpoint import SHARDED

PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def shard(module: torch.nn.Module, device: torch.device, mixed_precision: str = "no") -> None:
    """Shard `module` in place over every process: each element of a `blocks` list, then the rest."""
    if not dist.is_initialized():
        raise SystemExit("fsdp needs several processes: start the stage with `accelerate launch --num_processes N` "
                         "(on a CPU-only machine add --multi_gpu and --cpu true)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    dtype = PRECISION[mixed_precision]
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for name, child in module.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(child, torch.nn.ModuleList):
            for block in child:
                fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)


def full_values(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors from sharded ones (a collective: every process must call it)."""
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach() for k, v in values.items()}


def _tensors(module, trainable: dict, ema: dict | None, optimizer) -> dict:
    state = {"trainable": trainable, "optimizer": get_optimizer_state_dict(module, optimizer)}
    if ema is not None:
        state["ema"] = ema
    return state


def save_shards(folder: Path, module, trainable: dict, ema: dict | None, optimizer) -> None:
    """Every process writes its shard of the tensors into `folder` (a collective)."""
    dcp.save(_tensors(module, trainable, ema, optimizer), checkpoint_id=str(folder / SHARDED))


def load_shards(folder: Path, module, trainable: dict, ema: dict | None, optimizer) -> None:
    """Read this process' shard of a `save_shards` checkpoint back into the live tensors (a collective)."""
    state = _tensors(module, trainable, ema, optimizer)
    with torch.no_grad():
        dcp.load(state, checkpoint_id=str(folder / SHARDED))
    set_optimizer_state_dict(module, optimizer, state["optimizer"])
