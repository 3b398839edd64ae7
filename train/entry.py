"""What every stage script does: parse the config, optionally check the data, build the task, run the loop."""
from __future__ import annotations

from typing import Callable

from .config import TrainConfig, parse_config


def run_stage(description: str, make_task: Callable, defaults: dict | None = None,
              argv: list[str] | None = None) -> int:
    cfg: TrainConfig = parse_config(description, argv, defaults)
    if cfg.check_data:
        from .data import check_dataset
        report = check_dataset(cfg.data, frames=cfg.frames, max_foregrounds=cfg.max_foregrounds)
        print(report.format())
        return report.status
    from accelerate import PartialState

    from .checkpoint import seed_everything
    from .loop import train
    device = PartialState(cpu=cfg.cpu).device  # models load straight onto this process' device
    seed_everything(cfg.seed)
    train(make_task(cfg, device), cfg)
    return 0
