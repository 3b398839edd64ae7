"""The one training loop the three stages share; a stage is a `Task` that says what is trained and how it is scored.

Runs on accelerate: one process, or several with `accelerate launch` as DDP (the default) or, with `--fsdp true`,
fully sharded with torch FSDP2 (`train/fsdp.py`; checkpoints are then written shard by shard). Both are tested with
two CPU processes; accelerate's own FSDP and DeepSpeed plugins are not used or tested. With mixed precision, gradient
accumulation, AdamW + cosine schedule with warm-up, optional EMA, periodic logs and atomic checkpoints that
`--resume` continues from exactly (model, optimizer, scheduler, RNG, data position).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from layert2v_core.atomic import write_text

from . import fsdp as sharding
from .checkpoint import (apply_checkpoint, load_process_rng, resume_checkpoint, save_checkpoint, save_process_rng,
                         staging_folder)
from .config import TrainConfig, save_config
from .data import ForegroundGroupBatchSampler


class Task(Protocol):
    name: str
    module: torch.nn.Module          # what accelerate wraps (DDP syncs its trainable parameters)
    dataset: Any                      # len(), set_epoch(), foreground_counts(), __getitem__
    collate: Callable

    def trainable(self) -> dict[str, torch.nn.Parameter]: ...
    def loss(self, module: torch.nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]: ...
    def export(self, folder: Path, values: dict[str, torch.Tensor]) -> list[Path]: ...


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class ShardedBatches:
    """Batches of one N each, shuffled per epoch from the seed, dealt round-robin to processes; its position
    (epoch, batch) is part of a checkpoint so a resumed run reads exactly the batches it would have read."""

    def __init__(self, task: Task, batch_size: int, seed: int, rank: int, world: int, workers: int):
        self.task, self.batch_size, self.seed, self.rank, self.world, self.workers = \
            task, batch_size, seed, rank, world, workers
        self.epoch, self.position = 0, 0

    def epoch_batches(self) -> list[list[int]]:
        sampler = ForegroundGroupBatchSampler(self.task.dataset, self.batch_size, shuffle=True, seed=self.seed)
        sampler.set_epoch(self.epoch)
        every = list(sampler)
        per_process = len(every) // self.world  # equal counts, so no process waits for a batch that never comes
        if per_process == 0:
            raise SystemExit(f"{len(every)} batch(es) of {self.batch_size} cannot feed {self.world} processes; "
                             f"use more data or a smaller batch_size")
        return every[self.rank::self.world][:per_process]

    def __iter__(self) -> Iterator[dict]:
        while True:
            self.task.dataset.set_epoch(self.epoch)
            batches = self.epoch_batches()[self.position:]
            loader = DataLoader(self.task.dataset, batch_sampler=batches, collate_fn=self.task.collate,
                                num_workers=self.workers, persistent_workers=False)
            for batch in loader:
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0


def train(task: Task, cfg: TrainConfig) -> Path:
    """Run `task` to cfg.max_steps optimizer steps; returns the folder holding the exported result."""
    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              cpu=cfg.cpu)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed + accelerator.process_index)
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * accelerator.process_index)

    if cfg.fsdp:
        sharding.shard(task.module, accelerator.device, cfg.mixed_precision)  # before the parameters are collected
    trainable = task.trainable()
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, cfg.max_steps))
    if cfg.fsdp:
        module, plain_optimizer, optimizer = task.module, optimizer, accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(task.module, optimizer)
    ema = {k: v.detach().float().clone() for k, v in trainable.items()} if cfg.ema_decay > 0 else None
    named = {**trainable, **{f"ema.{k}": v for k, v in (ema or {}).items()}}  # what a checkpoint holds, by name

    batches = ShardedBatches(task, cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes,
                             cfg.num_workers)
    step = 0
    log_file = out / "log.jsonl"
    resume = resume_checkpoint(cfg.resume, cfg.output_dir, say=accelerator.print)
    if resume is not None:
        path, loaded = resume
        progress = apply_checkpoint(path, loaded, named, optimizer, scheduler, generator, sharded=cfg.fsdp)
        if cfg.fsdp:
            sharding.load_shards(path, module, trainable, ema, plain_optimizer)
        load_process_rng(path, accelerator.process_index, generator)
        step, batches.epoch, batches.position = progress["step"], progress["epoch"], progress["position"]
        if main:
            _truncate_log(log_file, step)
        accelerator.print(f"resumed from {path} at step {step}")

    board = _tensorboard(out / "tensorboard") if main else None
    bar = _progress_bar(cfg.max_steps, step, enabled=main)
    window: list[float] = []
    started, seen = time.perf_counter(), 0
    skipped = _SkipReport(task.dataset, accelerator.print)
    accelerator.print(f"{task.name}: {sum(p.numel() for p in trainable.values()):,} trainable parameters, "
                      f"{accelerator.num_processes} process(es) x batch {cfg.batch_size} x accumulation "
                      f"{cfg.grad_accum} = {cfg.batch_size * accelerator.num_processes * cfg.grad_accum} per step")
    data = iter(batches)
    module.train()
    while step < cfg.max_steps:
        batch = next(data)
        skipped.add(batch.get("skipped", ()))
        with accelerator.accumulate(module):
            loss, metrics = task.loss(module, batch, generator)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        seen += len(batch["id"]) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if ema is not None:
            with torch.no_grad():
                for k, v in trainable.items():
                    ema[k].lerp_(v.detach().float(), 1 - cfg.ema_decay)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            elapsed = time.perf_counter() - started
            record = {"step": step, "loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0],
                      "samples_per_s": seen / elapsed, **{k: float(v) for k, v in metrics.items()},
                      **skipped.record()}
            window = []
            if main:
                with open(log_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if board is not None:
                    for key, value in record.items():
                        if key != "step":
                            board.add_scalar(f"{task.name.split(':')[0]}/{key}", value, step)
                print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
                      flush=True)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            accelerator.wait_for_everyone()
            staging = staging_folder(out, step, create=main)
            accelerator.wait_for_everyone()
            save_process_rng(staging, accelerator.process_index, generator)
            if cfg.fsdp:
                sharding.save_shards(staging, module, trainable, ema, plain_optimizer)
            accelerator.wait_for_everyone()
            if main:
                position = {"epoch": batches.epoch, "position": batches.position}
                save_checkpoint(out, step, None if cfg.fsdp else named, None if cfg.fsdp else optimizer, scheduler,
                                generator, position, cfg.keep_last)

    if bar is not None:
        bar.close()
    if board is not None:
        board.close()
    accelerator.wait_for_everyone()
    final = out / "final"
    values = ema if ema is not None else {k: v.detach() for k, v in trainable.items()}
    if cfg.fsdp:
        values = sharding.full_values(values)  # every process takes part in gathering the shards
    if main:
        for path in task.export(final, values):
            print(f"wrote {path}", flush=True)
    accelerator.end_training()
    return final


class _SkipReport:
    """Samples the dataset could not use: each printed once when met, counted by kind in every log record."""

    def __init__(self, dataset, say: Callable[[str], None]):
        self.say, self.kinds = say, Counter(getattr(dataset, "skipped", {}))  # found while indexing the data
        if getattr(dataset, "skipped_samples", []):
            say(f"left out while indexing the data: {dataset.skip_summary()}")

    def add(self, entries) -> None:
        for entry in entries:
            self.kinds[entry["kind"]] += 1
            self.say(f"skipped sample {entry['id']}: {entry['reason']}")

    def record(self) -> dict:
        return {"skipped_samples": sum(self.kinds.values()), "skipped": dict(self.kinds)} if self.kinds else {}


def _truncate_log(log_file: Path, step: int) -> None:
    """Drop the records after `step` (written after the checkpoint a run resumes from), so no step is logged
    twice; a line cut short by a kill goes too."""
    if not log_file.exists():
        return
    kept = []
    for line in log_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    write_text(log_file, "".join(kept))


def _tensorboard(folder: Path):
    """A TensorBoard writer when tensorboard is installed; the jsonl log is written either way."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def _progress_bar(total: int, done: int, enabled: bool):
    """A step progress bar on an interactive terminal (log files get the periodic lines instead)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)
