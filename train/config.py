"""Training configuration: one dataclass, YAML files in train/configs/, every field overridable on the command line.

    python train/stage2.py --config train/configs/stage2_wan13b.yaml --lr 5e-5 --max-steps 2000
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    # data
    data: str = ""                      # VidLayer folder / jsonl, or a cache folder made by train/cache.py
    frames: int = 9                     # frames per clip, 4k+1
    height: int = 192                   # clip height, a multiple of 16
    width: int = 336                    # clip width, a multiple of 16
    frame_sampling: str = "continuous"  # continuous (consecutive frames) or uniform (spread over the clip)
    max_foregrounds: int = 1            # most foregrounds per sample (stage 3: 2 or 3)
    num_workers: int = 2                # DataLoader worker processes
    # model parts (a model folder, or each part)
    model: str = ""                     # a model folder holding the parts below
    dit: str = ""                       # the Wan2.1 DiT (file or folder)
    vae: str = ""                       # the Wan2.1 VAE
    mask_vae: str = ""                  # stage 2/3: the stage-1 result
    mask_mode: str = ""                 # stage 2/3 frozen alpha codec: "" = mask_vae's (vae-lora), vae, downsample
    text_encoder: str = ""              # umt5 (not needed with a cache folder)
    adapter: str = ""                   # stage 3: the stage-2 adapter to continue from
    routing_policy: str = "paper"       # paper, official or shared
    rope: str = "3d"                    # "4d": the official 4D RoPE (its training configs use 3d); kept in the adapter
    layer_adaln: bool = True            # false: LayerAdaLN stays at zero (the paper's temporal-concatenation baseline)
    # optimisation (paper appendix A)
    lr: float = 1e-4                    # AdamW learning rate
    weight_decay: float = 0.01          # AdamW weight decay
    warmup_steps: int = 500             # linear warm-up, then cosine decay
    max_steps: int = 6000               # optimizer steps in all
    batch_size: int = 8                 # per process; effective batch = batch_size x processes x grad_accum
    grad_accum: int = 1                 # batches per optimizer step
    max_grad_norm: float = 1.0          # gradient clipping norm (0 = off)
    t_mean: float = 0.0                 # t = sigmoid(N(t_mean, t_std)); 0 centres t on 0.5 as the official trainer
    t_std: float = 1.0                  # see t_mean
    t_shift: float = 1.0                # sigma shift applied to the sampled t
    text_dropout: float = 0.0           # fraction of samples trained on the negative prompt (the CFG branch)
    ema_decay: float = 0.0              # 0 = no EMA
    # LoRA
    lora_rank: int = 128                # 0 = train every DiT weight
    lora_alpha: float = 128.0           # LoRA scale = alpha / rank
    lora_targets: list = field(default_factory=lambda: [  # modules that get LoRA
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
        "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"])
    # loss weights
    lambda_cons: float = 0.1            # weight of the layer-consistency loss
    foreground_weight: float = 0.0      # flow matching weighs latent positions a foreground covers 1 + this x alpha
    lambda_mask: float = 0.1            # weight of the alpha-matte reconstruction loss
    lambda_grad: float = 0.1            # weight of the matte gradient term
    lambda_edge: float = 1.0            # stage 1: weight of the edge loss
    lambda_perc: float = 1.0            # stage 1: weight of the perceptual loss
    perceptual_weights: str = ""        # stage 1: VGG16 feature weights (torchvision layout); empty = MS-SSIM
    # mask VAE adapter sizes (stage 1)
    mask_lora_rank: int = 128           # LoRA rank of the alpha VAE
    mask_lora_alpha: float = 128.0      # LoRA alpha of the alpha VAE
    mask_proj_hidden: int = 64          # width of the alpha VAE's latent projection
    # run
    output_dir: str = "runs/stage"      # checkpoints, log.jsonl and final/ go here
    seed: int = 0                       # seeds every random choice: init, data, noise
    mixed_precision: str = "no"         # "no", "bf16", "fp16"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory)
    cpu: bool = False                   # train on the CPU
    fsdp: bool = False                  # shard the model over the processes (torch FSDP2) instead of DDP
    log_every: int = 10                 # steps between log lines
    save_every: int = 500               # steps between checkpoints
    keep_last: int = 3                  # checkpoints kept
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
        if self.mask_mode not in FROZEN_MASK_MODES:
            problems.append(f"mask_mode {self.mask_mode!r} cannot be trained here: this trainer keeps the alpha codec "
                            f"frozen, which the official code does for {list(FROZEN_MASK_MODES[1:])} (the others "
                            f"train their codec with the DiT)")
        if self.foreground_weight < 0:
            problems.append(f"foreground_weight must be >= 0, got {self.foreground_weight}")
        if not 0.0 <= self.text_dropout < 1.0:
            problems.append(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        for name in ("batch_size", "grad_accum", "max_steps", "save_every", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise SystemExit("bad training configuration: " + "; ".join(problems))


# The official mask modes whose codec stays fixed while the DiT trains ("" = the alpha VAE file's, vae-lora).
FROZEN_MASK_MODES = ("", "vae-lora", "vae", "downsample")


def _option_type(annotation):
    base = {"int": int, "float": float, "str": str, "bool": bool, "list": list}.get(str(annotation), annotation)
    return base


def _field_notes() -> tuple[dict[str, str], dict[str, str]]:
    """(field -> its comment, field -> its section) from TrainConfig's source: the comments are the documentation."""
    notes, sections, section = {}, {}, "options"
    try:
        lines = inspect.getsource(TrainConfig).splitlines()
    except (OSError, TypeError):  # no source shipped: flags without descriptions
        return notes, sections
    for line in lines:
        if heading := re.match(r"^    # (.+)$", line):
            section = heading.group(1)
        elif entry := re.match(r"^    (\w+): [^#]+?(?:#\s*(.*))?$", line):
            notes[entry.group(1)] = entry.group(2) or ""
            sections[entry.group(1)] = section
    return notes, sections


def parse_config(description: str, argv: list[str] | None = None, defaults: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file of --config, then command-line flags (each field is a --flag)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any of the options below (flags override it)")
    notes, sections = _field_notes()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        kind = _option_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        default = (defaults or {}).get(f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING
                                       else f.default)
        shown = ",".join(default) if isinstance(default, list) else "none" if default == "" else default
        text = f"{notes.get(f.name, '')} (default: {shown})".lstrip().replace("%", "%%")
        section = sections.get(f.name, "options")
        group = groups.get(section) or groups.setdefault(section, parser.add_argument_group(section))
        if kind is bool:
            group.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), metavar="BOOL", help=text)
        elif kind is list:
            group.add_argument(flag, type=lambda s: [x for x in s.split(",") if x], metavar="A,B", help=text)
        else:
            group.add_argument(flag, type=kind, help=text)
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

