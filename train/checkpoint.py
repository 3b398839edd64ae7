"""Training checkpoints: trainable tensors, optimizer, scheduler, RNG and data position, written atomically.

A checkpoint is a folder `checkpoint-{step:07d}` written under a temporary name and renamed when complete, so a
crash never leaves a half checkpoint; the newest `keep_last` are kept. Everything is read back with safetensors
or torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from layert2v_core.weights import CheckpointError, load_torch_file, save_weights_atomic

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


def seed_everything(seed: int) -> None:
    """Seed every random source before any module is built, so initialisations (LoRA, new layers) repeat too."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)  # every device's generator as well


SHARDED = "sharded"  # an fsdp checkpoint's tensor folder (train/fsdp.py), instead of trainable.safetensors


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor] | None, dict, dict]:
    """(trainable tensors, optimizer/scheduler/RNG state, progress) of one checkpoint folder; tensors None for a
    sharded (fsdp) checkpoint, whose tensors and optimizer its processes read themselves. CheckpointError naming the
    file that is missing, truncated or malformed."""
    try:
        progress = json.loads((path / "progress.json").read_text())
        if not isinstance(progress, dict) or not all(isinstance(progress.get(k), int)
                                                     for k in ("step", "epoch", "position")):
            raise ValueError(f"expected step, epoch and position, got {str(progress)[:80]}")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"progress.json is unreadable ({str(error) or type(error).__name__})") from None
    sharded = not (path / "trainable.safetensors").exists() and (path / SHARDED).is_dir()
    tensors = None
    if not sharded:
        try:
            tensors = load_file(str(path / "trainable.safetensors"))
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"trainable.safetensors is unreadable ({error})") from None
    needed = {"scheduler", "rng"} | (set() if sharded else {"optimizer"})
    try:
        state = load_torch_file(path / "state.pt", mmap=False)
        if not isinstance(state, dict) or not needed <= set(state):
            raise CheckpointError("it lacks the optimizer, scheduler or RNG state")
    except CheckpointError as error:  # the loader's own words, less its file name and advice on downloads
        detail = re.search(r"\(([^()]*)\)", str(error))
        raise CheckpointError(f"state.pt is unreadable ({detail.group(1) if detail else error})") from None
    return tensors, state, progress


def resume_checkpoint(resume: str, output_dir: str, say=print) -> tuple[Path, tuple] | None:
    """The checkpoint to continue from, read: 'latest' is the newest one that reads back whole (broken newer ones
    are reported through `say` and skipped); a named folder must read back whole. None when there is none yet."""
    if not resume:
        return None
    if resume != "latest":
        path = Path(resume)
        if not (path / "progress.json").exists():
            raise SystemExit(f"--resume {resume}: not a checkpoint folder (no progress.json); use a "
                             f"{PREFIX}NNNNNNN folder or 'latest'")
        try:
            return path, read_checkpoint(path)
        except CheckpointError as error:
            raise SystemExit(f"--resume {resume}: {error}; resume from an earlier checkpoint or 'latest'") from None
    found = list_checkpoints(output_dir)
    for path in reversed(found):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as error:
            say(f"skipped {path.name}: {error}")
    if found:
        raise SystemExit(f"--resume latest: none of the {len(found)} checkpoint(s) in {output_dir} reads back whole "
                         f"(see above); delete them to start over")
    return None


def apply_checkpoint(path: Path, loaded: tuple, trainable: dict[str, torch.nn.Parameter], optimizer, scheduler,
                     generator: torch.Generator, sharded: bool = False) -> dict:
    """Put a read checkpoint into the run: weights and optimizer (unless `sharded`: train/fsdp.py reads those),
    scheduler, RNG; returns its progress record."""
    tensors, state, progress = loaded
    if sharded != (tensors is None):
        raise SystemExit(f"{path}: a sharded (fsdp) checkpoint; resume it with --fsdp true and the same process count"
                         if tensors is None else
                         f"{path}: not a sharded (fsdp) checkpoint; resume it without --fsdp, or start afresh")
    if not sharded:
        missing = sorted(set(trainable) - set(tensors))
        if missing:
            raise SystemExit(f"{path}: checkpoint lacks trainable tensors {missing[:5]}; it was made by another "
                             f"stage or configuration")
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(tensors[name].to(param.dtype))
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], generator)
    return progress
