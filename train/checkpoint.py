"""Training checkpoints: trainable tensors, optimizer, scheduler, RNG and data position, written atomically.

A checkpoint is a folder `checkpoint-{step:07d}` written under a temporary name and renamed when complete, so a
crash never leaves a half checkpoint; the newest `keep_last` are kept. Everything is read back with safetensors
or torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from layert2v_core.weights import save_weights_atomic

PREFIX = "checkpoint-"


def rng_state(generator: torch.Generator) -> dict:
    """Every random source the loop draws from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def staging_folder(folder: str | os.PathLike, step: int, create: bool = False) -> Path:
    """Where the checkpoint of `step` is written before it is renamed into place; `create` starts it empty."""
    tmp = Path(folder) / f".{PREFIX}{step:07d}.tmp"
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def save_process_rng(folder: Path, rank: int, generator: torch.Generator) -> None:
    """This process' random state: each process draws its own noise, so each resumes its own stream."""
    torch.save(rng_state(generator), folder / f"rng-{rank}.pt")


def load_process_rng(folder: Path, rank: int, generator: torch.Generator) -> None:
    path = folder / f"rng-{rank}.pt"
    if path.exists():  # checkpoints written before per-process states keep the main process' state for all
        set_rng_state(torch.load(path, map_location="cpu", weights_only=True), generator)


def save_checkpoint(folder: str | os.PathLike, step: int, trainable: dict[str, torch.Tensor] | None, optimizer,
                    scheduler, generator: torch.Generator, extra: dict, keep_last: int) -> Path:
    """Complete the staging folder (see `staging_folder`) and rename it into place; trainable and optimizer None:
    their shards are already there."""
    root = Path(folder)
    final = root / f"{PREFIX}{step:07d}"
    tmp = staging_folder(root, step)
    if trainable is not None:
        save_weights_atomic({k: v.detach().float().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    state = {"scheduler": scheduler.state_dict(), "rng": rng_state(generator)}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, **extra}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def resolve_resume(resume: str, output_dir: str) -> Path | None:
    """'latest' -> the newest checkpoint in output_dir (None if there is none yet); else the given folder."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "progress.json").exists():
        raise SystemExit(f"--resume {resume}: not a checkpoint folder (no progress.json); use a "
                         f"{PREFIX}NNNNNNN folder or 'latest'")
    return path


def load_checkpoint(path: Path, trainable: dict[str, torch.nn.Parameter], optimizer, scheduler,
                    generator: torch.Generator) -> dict:
    if not (path / "trainable.safetensors").exists():
        raise SystemExit(f"{path}: a sharded (fsdp) checkpoint; resume it with --fsdp true and the same process "
                         f"count")
    tensors = load_file(str(path / "trainable.safetensors"))
    missing = sorted(set(trainable) - set(tensors))
    if missing:
        raise SystemExit(f"{path}: checkpoint lacks trainable tensors {missing[:5]}; it was made by another stage "
                         f"or configuration")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(tensors[name].to(param.dtype))
    optimizer.load_state_dict(torch.load(path / "state.pt", map_location="cpu", weights_only=True)["optimizer"])
    return load_progress(path, scheduler, generator)


def load_progress(path: Path, scheduler, generator: torch.Generator) -> dict:
    """The schedule, the random state and the step / data position of a checkpoint (not its tensors)."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], generator)
    return json.loads((path / "progress.json").read_text())
