"""Build the embedded demo model from nothing, on CPU, with the project's own code only.

    python train/build_demo.py --out models/layert2v-tiny

Steps: synthetic layered videos (train/synthetic.py) -> a umt5 tokenizer + encoder for their vocabulary -> a
Wan2.1-architecture VAE trained on them -> stage 1 (alpha VAE) -> a training cache -> stage 2 (the DiT learns
single-foreground layering; trained in full, as there is no pretrained tiny Wan) -> stage 3 (up to three
foregrounds) -> evaluation on held-out prompts and a model card. Work files go to --work; the model folder gets
only what generation needs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from layert2v_core.atomic import write_json  # noqa: E402
from layert2v_core.checkpoints import load_dit, save_dit  # noqa: E402
from layert2v_core.dit import WanDiT  # noqa: E402
from layert2v_core.model_folder import GENERATION_FILE  # noqa: E402
from layert2v_core.vae import load_vae, save_vae  # noqa: E402
from train.cache import build_cache  # noqa: E402
from train.config import parse_config  # noqa: E402
from train.dit_task import DiTTask, MultiForegroundTask  # noqa: E402
from train.evaluate_demo import SAMPLING, evaluate_and_write_card  # noqa: E402
from train.loop import train  # noqa: E402
from train.mask_vae_task import MaskVAETask  # noqa: E402
from train.synthetic import caption_vocabulary, write_dataset  # noqa: E402
from train.tiny_models import example_sentences, tiny_dit_config, write_text_encoder  # noqa: E402
from train.vae_task import VAETask  # noqa: E402

# Sizes and schedules; --quick shrinks them to a smoke run (used by the tests).
# The VAE learns shapes and textures on single frames first (a batch of 16 frames costs what 2 clips do and is far
# more varied), then the temporal layers on clips as long as the DiT's: trained on 5-frame clips only, it
# reconstructed frames 5-8 of 9-frame clips about twice as badly. Its L1 weighs foreground pixels 1 + 20·alpha.
# The clip phase starts frame by frame (vae_task.start_frame_by_frame) at a low lr: at 1e-3 its batches of two clips
# undid part of the single-frame phase (frame-0 L1 0.100 -> 0.130 in 300 steps), at 3e-4 they did not (0.109).
# The DiT stays at width 128: for the same 4.5 minutes of stage 2, width 256 (0.29 s/step against 0.13) ended at
# loss 0.542 against 0.508. The time the clip phase no longer needs went to more DiT steps and multi-foreground data.
# The DiT stages leave out the alpha-decoder loss (lambda_mask 0): decoding every predicted mask through the alpha VAE
# is ~90% of a step of this small model (measured 0.11 s/step without, 1.1 s with); the quick plan keeps it on so
# the tests still run it.
FULL = dict(frames=9, size=48, single=700, multi=500, text_dim=64, vae_width=8, vae_foreground_weight=20.0,
            vae_image_steps=1000, vae_image_batch=16, vae_steps=300, vae_batch=2, vae_lr=2e-3, vae_clip_lr=3e-4,
            mask_steps=100, stage2_steps=7000, stage3_steps=2000, lambda_mask=0.0, batch=8,
            dit=dict(dim=128, ffn_dim=512, num_heads=2, num_layers=4),
            eval=dict(seeds=24, two_fg_seeds=12, steps=25), fps=8.0)
QUICK = dict(frames=5, size=32, single=8, multi=6, text_dim=32, vae_width=8, vae_foreground_weight=20.0,
             vae_image_steps=3, vae_image_batch=4, vae_steps=3, vae_batch=2, vae_lr=2e-3, vae_clip_lr=3e-4,
             mask_steps=3, stage2_steps=3, stage3_steps=3, lambda_mask=0.1, batch=2,
             dit=dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2),
             eval=dict(seeds=2, two_fg_seeds=1, steps=3), fps=8.0)


def stage_config(plan: dict, work: Path, name: str, **options) -> "TrainConfig":  # noqa: F821
    """A TrainConfig for one step of the build, every value spelled out (the model card records them)."""
    base = {"frames": plan["frames"], "height": plan["size"], "width": plan["size"], "batch_size": plan["batch"],
            "num_workers": 0, "cpu": True, "log_every": 50, "save_every": 100000, "keep_last": 1,
            "warmup_steps": 50, "output_dir": str(work / name), "seed": 0,
            "t_mean": 0.5}  # the shipped demo model was trained with t = sigmoid(N(0.5, 1))
    base.update(options)
    argv = []
    for key, value in base.items():
        argv += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, list) else str(value)]
    return parse_config(name, argv)


def build(out: Path, work: Path, plan: dict, evaluate: bool = True) -> dict:
    timings, started = {}, time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)
        print(f"[build_demo] {name}: {timings[name]} s", flush=True)

    data1, data_multi = work / "data_single", work / "data_multi"
    write_dataset(data1, samples=plan["single"], seed=1, frames=plan["frames"], height=plan["size"],
                  width=plan["size"], max_foregrounds=1, split="train", lossless=True)
    write_dataset(data_multi, samples=plan["multi"], seed=2, frames=plan["frames"], height=plan["size"],
                  width=plan["size"], max_foregrounds=3, split="train", lossless=True)
    lap("synthetic data")

    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    sentences = example_sentences(caption_vocabulary(), count=2000) + [
        json.loads((p / "metadata.json").read_text())["captions"]["full"] for p in sorted(data1.iterdir())[:500]]
    write_text_encoder(parts / "text_encoder.safetensors", sentences, d_model=plan["text_dim"])
    torch.manual_seed(0)
    save_dit(WanDiT(tiny_dit_config(plan["text_dim"], 1, **plan["dit"])), parts / "dit_init.safetensors")
    lap("text encoder and initial DiT")

    weight = plan["vae_foreground_weight"]
    cfg = stage_config(plan, work, "vae_frames", data=str(data_multi), max_foregrounds=3, frames=1,
                       batch_size=plan["vae_image_batch"], max_steps=plan["vae_image_steps"], lr=plan["vae_lr"])
    train(VAETask(cfg, width=plan["vae_width"], foreground_weight=weight), cfg)
    cfg = stage_config(plan, work, "vae", data=str(data_multi), max_foregrounds=3, batch_size=plan["vae_batch"],
                       vae=str(work / "vae_frames" / "final" / "vae.safetensors"), max_steps=plan["vae_steps"],
                       lr=plan["vae_clip_lr"])
    train(VAETask(cfg, foreground_weight=weight), cfg)
    shutil.copy(work / "vae" / "final" / "vae.safetensors", parts / "vae.safetensors")
    lap("vae")

    cfg = stage_config(plan, work, "stage1", data=str(data_multi), max_foregrounds=3,
                       vae=str(parts / "vae.safetensors"), max_steps=plan["mask_steps"], lr=2e-3, mask_lora_rank=8,
                       mask_lora_alpha=8, mask_proj_hidden=16, batch_size=plan["vae_batch"])
    train(MaskVAETask(cfg), cfg)
    shutil.copy(work / "stage1" / "final" / "mask_vae.safetensors", parts / "mask_vae.safetensors")
    lap("stage 1")

    model_parts = dict(vae=str(parts / "vae.safetensors"), mask_vae=str(parts / "mask_vae.safetensors"),
                       text_encoder=str(parts / "text_encoder.safetensors"))
    for name, data, n in (("cache_single", data1, 1), ("cache_multi", data_multi, 3)):
        build_cache(stage_config(plan, work, name, data=str(data), max_foregrounds=n, **model_parts), work / name)
    lap("cache")

    cfg = stage_config(plan, work, "stage2", data=str(work / "cache_single"), max_foregrounds=1, lora_rank=0,
                       dit=str(parts / "dit_init.safetensors"), max_steps=plan["stage2_steps"], lr=1e-3,
                       warmup_steps=100, lambda_mask=plan["lambda_mask"], **model_parts)
    train(DiTTask(cfg), cfg)
    lap("stage 2")

    cfg = stage_config(plan, work, "stage3", data=str(work / "cache_multi"), max_foregrounds=3, lora_rank=0,
                       dit=str(work / "stage2" / "final" / "dit.safetensors"), max_steps=plan["stage3_steps"],
                       lr=5e-4, lambda_mask=plan["lambda_mask"], **model_parts)
    train(MultiForegroundTask(cfg), cfg)
    lap("stage 3")

    out.mkdir(parents=True, exist_ok=True)
    dit = load_dit(work / "stage3" / "final" / "dit.safetensors")
    save_dit(dit, out / "dit.safetensors", dtype=torch.float16)  # half the size; loaded in fp32 on CPU
    save_vae(load_vae(parts / "vae.safetensors"), out / "vae.safetensors", dtype=torch.float16)
    for name in ("mask_vae.safetensors", "text_encoder.safetensors"):
        shutil.copy(parts / name, out / name)
    # What generation defaults to with this model (the CLI reads it): its training size and the evaluation's sampling.
    write_json(out / GENERATION_FILE, {"frames": plan["frames"], "height": plan["size"], "width": plan["size"],
                                       "steps": plan["eval"]["steps"], "cfg": SAMPLING["guidance"],
                                       "shift": SAMPLING["shift"], "solver": SAMPLING["solver"], "fps": plan["fps"]})
    record = {"plan": plan, "seconds": timings, "total_seconds": round(time.perf_counter() - started, 1),
              "command": "python train/build_demo.py " + " ".join(sys.argv[1:]),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    write_json(out / "build.json", record)
    if evaluate:
        evaluate_and_write_card(out, work / "evaluation", frames=plan["frames"], size=plan["size"], fps=plan["fps"],
                                **plan["eval"])
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/layert2v-tiny", help="the model folder to write")
    parser.add_argument("--work", default="runs/demo", help="data, checkpoints and logs of the build")
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes and a few steps")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation and model card")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    record = build(Path(args.out), Path(args.work), QUICK if args.quick else FULL, evaluate=not args.no_eval)
    print(f"[build_demo] done in {record['total_seconds']} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
