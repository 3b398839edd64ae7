"""The paper's ablation of its layer-aware modules (Table 3), in miniature on the synthetic world.

Three DiTs train from the same initial weights with the same data, steps, batches and seeds, on the embedded demo
model's VAE, alpha VAE and text encoder (so only the DiT differs):

  (a) baseline: temporal concatenation only (routing `shared`: every segment sees every prompt; LayerAdaLN frozen
      at zero);
  (b) + LayerAdaLN (trained; routing still shared);
  (c) + LayerAdaLN + layered cross-attention (routing `paper`).

Each is evaluated by layert2v_core.evaluation on the demo's held-out single-foreground prompts. The toy world has no
DINO or CLIP, so Table 3's subject consistency and text alignment are replaced by what measures the same thing
here (foreground presence and alpha stability; the prompted colour and direction). Writes OUT/ablation.md and
OUT/ablation.json; `--resume` continues an interrupted run (finished variants are kept, a training run resumes
from its last checkpoint).

    python train/ablation.py --out runs/ablation [--steps 2000] [--quick]
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

from layert2v_core.atomic import write_json, write_text  # noqa: E402
from layert2v_core.checkpoints import load_dit, save_dit  # noqa: E402
from layert2v_core.dit import WanDiT  # noqa: E402
from layert2v_core.evaluation.report import cell  # noqa: E402
from layert2v_core.model_folder import GENERATION_FILE, demo_model_folder, generation_settings  # noqa: E402
from train.build_demo import FULL, QUICK, stage_config  # noqa: E402
from train.cache import build_cache  # noqa: E402
from train.dit_task import DiTTask  # noqa: E402
from train.evaluate_demo import SAMPLING, evaluate  # noqa: E402
from train.loop import train  # noqa: E402
from train.synthetic import write_dataset  # noqa: E402
from train.tiny_models import tiny_dit_config  # noqa: E402

VARIANTS = {  # name: (routing policy, LayerAdaLN trained)
    "baseline (temporal concatenation)": ("shared", False),
    "baseline + LayerAdaLN": ("shared", True),
    "baseline + LayerAdaLN + layered cross-attention": ("paper", True),
}
PARTS = ("vae.safetensors", "mask_vae.safetensors", "text_encoder.safetensors")
# (aggregate key, column title): Table 3's columns where the toy world can measure them, then what stands in.
COLUMNS = (
    ("vbench.temporal_flickering.FG", "Temporal Flickering FG"),
    ("vbench.temporal_flickering.BG", "Temporal Flickering BG"),
    ("vbench.temporal_flickering.BL", "Temporal Flickering BL"),
    ("vbench.motion_smoothness.FG", "Motion Smoothness FG"),
    ("layers.fg_presence", "FG present (frames)"),
    ("layers.alpha_stability", "alpha IoU t/t+1"),
    ("layers.world_colour_match", "prompted colour (FG)"),
    ("layers.direction_agreement", "prompted direction"),
    ("layers.world_background_free_of_colour", "BG free of FG colour"),
    ("layers.fg_in_full", "FG shown in full"),
    ("layers.consistency_in_alpha", "consistency error in alpha (lower better)"),
)


def _get(table: dict, dotted: str):
    for key in dotted.split("."):
        table = (table or {}).get(key)
    return table


def plan_for(args) -> dict:
    base = QUICK if args.quick else FULL
    plan = {**base, "single": args.samples or (8 if args.quick else 400),
            "steps": args.steps or (3 if args.quick else 2000),
            "eval_seeds": args.eval_seeds or (2 if args.quick else 24),
            "eval_steps": base["eval"]["steps"]}
    return plan


def run(out: Path, plan: dict, demo: Path, resume: bool) -> dict:
    if not resume and out.exists():
        raise SystemExit(f"{out} exists: pass --resume to continue it, or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "ablation.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"plan": plan, "variants": {}}
    if results["plan"] != plan:
        raise SystemExit(f"{results_file} was made with another plan; use a new --out")
    timings = results.setdefault("seconds", {})
    parts = {name.split(".")[0]: str(demo / name) for name in PARTS}
    settings = generation_settings(demo)
    text_dim = load_dit_text_dim(demo)

    data, cache, init = out / "data", out / "cache", out / "dit_init.safetensors"
    if not (cache / "done").exists():
        started = time.perf_counter()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        write_dataset(data, samples=plan["single"], seed=11, frames=plan["frames"], height=plan["size"],
                      width=plan["size"], max_foregrounds=1, split="train", lossless=True)
        build_cache(stage_config(plan, out, "cache", data=str(data), max_foregrounds=1, vae=parts["vae"],
                                 mask_vae=parts["mask_vae"], text_encoder=parts["text_encoder"]), cache)
        (cache / "done").write_text("")
        timings["data and cache"] = round(time.perf_counter() - started, 1)
    if not init.exists():
        torch.manual_seed(0)
        save_dit(WanDiT(tiny_dit_config(text_dim, 1, **plan["dit"])), init)

    for index, (name, (policy, layer_adaln)) in enumerate(VARIANTS.items()):
        if name in results["variants"]:
            continue
        started = time.perf_counter()
        work = out / f"variant_{index}"
        cfg = stage_config(plan, work, "train", data=str(cache), max_foregrounds=1, lora_rank=0, dit=str(init),
                           max_steps=plan["steps"], lr=1e-3, warmup_steps=100, lambda_mask=0.0,
                           routing_policy=policy, layer_adaln=str(layer_adaln).lower(), save_every=500,
                           resume="latest" if (work / "train").exists() else "", **parts)
        train(DiTTask(cfg), cfg)
        folder = work / "model"
        folder.mkdir(parents=True, exist_ok=True)
        save_dit(load_dit(work / "train" / "final" / "dit.safetensors"), folder / "dit.safetensors")
        for part in PARTS:
            shutil.copy(demo / part, folder / part)
        write_json(folder / GENERATION_FILE, {**settings, "frames": plan["frames"], "height": plan["size"],
                                              "width": plan["size"]})
        report = evaluate(folder, work / "evaluation", plan["frames"], plan["size"], seeds=plan["eval_seeds"],
                          two_fg_seeds=0, steps=plan["eval_steps"], fps=plan["fps"])
        results["variants"][name] = {"policy": policy, "layer_adaln": layer_adaln,
                                     "aggregate": report["runs"]["model"]["aggregate"],
                                     "truth": report["runs"]["ground truth"]["aggregate"]}
        timings[name] = round(time.perf_counter() - started, 1)
        write_json(results_file, results)
    write_text(out / "ablation.md", table(results, " ".join(sys.argv[1:])))
    return results


def load_dit_text_dim(demo: Path) -> int:
    return load_dit(demo / "dit.safetensors").config.text_dim


def table(results: dict, arguments: str) -> str:
    plan = results["plan"]
    truth = next(iter(results["variants"].values()))["truth"] if results["variants"] else {}
    lines = ["# Ablation of the layer-aware modules (the paper's Table 3, on the synthetic world)", "",
             f"Command: `python train/ablation.py {arguments}`. Each variant: a DiT {plan['dit']} trained from the "
             f"same initial weights for {plan['steps']} steps (batch {plan['batch']}, lr 1e-3, seed 0) on "
             f"{plan['single']} single-foreground synthetic samples ({plan['size']}x{plan['size']}, "
             f"{plan['frames']} frames), with the demo model's VAE, alpha VAE and text encoder; evaluated on "
             f"{plan['eval_seeds']} held-out prompts ({plan['eval_steps']} {SAMPLING['solver']} steps, guidance "
             f"{SAMPLING['guidance']}). Seconds: "
             + ", ".join(f"{k} {v}" for k, v in results.get("seconds", {}).items())
             + ".", "",
             "| configuration | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + " --- |" * (1 + len(COLUMNS))]
    for name, row in results["variants"].items():
        lines.append(f"| {name} | " + " | ".join(cell(_get(row["aggregate"], key)) for key, _ in COLUMNS) + " |")
    if truth:
        lines.append("| ground truth | " + " | ".join(cell(_get(truth, key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablation", help="work folder; ablation.md and ablation.json in it")
    parser.add_argument("--steps", type=int, help="training steps per variant (default 2000; --quick 3)")
    parser.add_argument("--samples", type=int, help="single-foreground training samples (default 400)")
    parser.add_argument("--eval-seeds", type=int, help="held-out prompts per variant (default 24)")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (the tests)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--demo", help="model folder whose VAE, alpha VAE and text encoder are used (default: the "
                                       "embedded demo model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    demo = Path(args.demo) if args.demo else demo_model_folder()
    results = run(Path(args.out), plan_for(args), demo, args.resume)
    print(table(results, " ".join(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
