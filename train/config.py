"""Training configuration: one dataclass, YAML files in train/configs/, every field overridable on the command line.

    python train/stage2.py --config train/configs/stage2_wan13b.yaml --lr 5e-5 --max-steps 2000
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    # data
    data: str = ""                      # VidLayer folder / jsonl, or a cache folder made by train/cache.py
    frames: int = 9
    height: int = 192
    width: int = 336
    frame_sampling: str = "continuous"  # or "uniform"
    max_foregrounds: int = 1
    num_workers: int = 2
    # model parts (a model folder, or each part)
    model: str = ""
    dit: str = ""
    vae: str = ""
    mask_vae: str = ""                  # stage 2/3: the stage-1 result
    text_encoder: str = ""
    adapter: str = ""                   # stage 3: the stage-2 adapter to continue from
    routing_policy: str = "paper"
    rope: str = "3d"                    # "4d": the official 4D RoPE (its training configs use 3d); kept in the adapter
    # optimisation (paper appendix A)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    max_steps: int = 6000
    batch_size: int = 8                 # per process; effective batch = batch_size x processes x grad_accum
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    t_mean: float = 0.0                 # t = sigmoid(N(t_mean, t_std)); 0 centres t on 0.5 as the official trainer
    t_std: float = 1.0
    t_shift: float = 1.0
    ema_decay: float = 0.0              # 0 = no EMA
    # LoRA
    lora_rank: int = 128
    lora_alpha: float = 128.0
    lora_targets: list = field(default_factory=lambda: [
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
        "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"])
    # loss weights
    lambda_cons: float = 0.1
    lambda_mask: float = 0.1
    lambda_grad: float = 0.1
    lambda_edge: float = 1.0
    lambda_perc: float = 1.0
    perceptual_weights: str = ""        # stage 1: VGG16 feature weights (torchvision layout); empty = MS-SSIM
    # mask VAE adapter sizes (stage 1)
    mask_lora_rank: int = 128
    mask_lora_alpha: float = 128.0
    mask_proj_hidden: int = 64
    # run
    output_dir: str = "runs/stage"
    seed: int = 0
    mixed_precision: str = "no"         # "no", "bf16", "fp16"
    gradient_checkpointing: bool = False
    cpu: bool = False
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    resume: str = ""                    # a checkpoint folder, or "latest" in output_dir
    export_merged: bool = False         # stage 2/3: also write the DiT with the adapter merged
    check_data: bool = False            # validate the dataset, print the report, and stop

    def validate(self) -> None:
        problems = []
        if not self.data:
            problems.append("data is empty: give --data (a VidLayer folder, jsonl, or a cache folder)")
        if self.frames < 1 or (self.frames - 1) % 4:
            problems.append(f"frames must be 4k+1, got {self.frames}")
        if self.height % 16 or self.width % 16:
            problems.append(f"height and width must be multiples of 16, got {self.height}x{self.width}")
        if self.rope not in ("3d", "4d"):
            problems.append(f"rope must be 3d or 4d, got {self.rope!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            problems.append(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "save_every", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise SystemExit("bad training configuration: " + "; ".join(problems))


def _option_type(annotation):
    base = {"int": int, "float": float, "str": str, "bool": bool, "list": list}.get(str(annotation), annotation)
    return base


def parse_config(description: str, argv: list[str] | None = None, defaults: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file of --config, then command-line flags (each field is a --flag)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file with any of the options below")
    for f in dataclasses.fields(TrainConfig):
        kind = _option_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), metavar="BOOL")
        elif kind is list:
            parser.add_argument(flag, type=lambda s: [x for x in s.split(",") if x], metavar="A,B")
        else:
            parser.add_argument(flag, type=kind)
    args = parser.parse_args(argv)
    values = dict(defaults or {})
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        unknown = sorted(set(loaded) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise SystemExit(f"{args.config}: unknown option(s) {unknown}")
        values.update(loaded)
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

