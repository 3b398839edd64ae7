"""Build the embedded demo model from nothing, on CPU, with the project's own code only.

    python train/build_demo.py                 # writes models/layert2v-tiny; work files in runs/demo
    python train/build_demo.py --resume        # continue an interrupted build where it stopped
    python train/build_demo.py --quick         # a smoke run, written under runs/demo-quick

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

from layert2v_core.atomic import write_json, writing_folder  # noqa: E402
from layert2v_core.checkpoints import load_dit, save_dit  # noqa: E402
from layert2v_core.dit import WanDiT  # noqa: E402
from layert2v_core.model_folder import DEMO_DIT, GENERATION_FILE  # noqa: E402
from layert2v_core.vae import load_vae, save_vae  # noqa: E402
from train.cache import build_cache  # noqa: E402
from train.config import parse_config  # noqa: E402
from train.dit_task import DiTTask, MultiForegroundTask  # noqa: E402
from train.evaluate_demo import SAMPLING, evaluate_and_write_card, previous_summary  # noqa: E402
from train.loop import train  # noqa: E402
from train.mask_vae_task import MaskVAETask  # noqa: E402
from train.synthetic import (FOREGROUND_CAPTIONS, TRAVEL, caption_vocabulary, rewrite_captions,  # noqa: E402
                             write_dataset)
from train.tiny_models import example_sentences, tiny_dit_config, write_text_encoder  # noqa: E402
from train.vae_task import VAETask  # noqa: E402

# Sizes and schedules; --quick shrinks them to a smoke run (used by the tests).
# 64x64, 17 frames: 5 latent frames per layer, so the VAE's temporal decoding and the DiT's temporal attention are
# really exercised. The VAE learns shapes and textures on single frames first (a batch of 16 frames costs about what
# 2 clips do and is far more varied), then its temporal layers on clips as long as the DiT's, starting frame by frame
# with halfway-frame up-samplers (vae_task.start_frame_by_frame) at a low lr: at 1e-3 its batches of two clips undid
# part of the single-frame phase, at 3e-4 they did not. Its L1 weighs foreground pixels 1 + 20·alpha and, on clips,
# also frame-to-frame differences. The cause of the previous demo's 4-frame jumps, measured on ground-truth clips
# passed through its VAE (largest/median centroid step of a premultiplied foreground; truth 1.05): its up-samplers
# repeated frames and 300 clip steps had not undone it, 9.5; here, after the image phase with repeating up-samplers,
# 10.4, and after 750 clip steps 3.7. With halfway frames: 4.0 before any clip step (only the first latent group
# still), 2.2 after 500.
# The DiT has one 128-wide head (dim 128), as every Wan2.1 model has 128-wide heads: at dim 256 with two heads a
# step costs 2.5-3.5x as much (0.24 -> 0.6 s single-foreground, 0.5 -> 1.6 s three-foreground, batch 8), and in
# 150 s of stage 2 from the same init on this build's cache it made 222 steps against 541 and ended at a higher fixed
# validation loss (0.562 against 0.465, 64 cached samples, fixed noise): dim 128 learns more per minute.
# ComfyUI's own Wan loader reads any Wan2.1 file with a 256-wide time embedding and 4096-wide text input, so the DiT
# has both (they cost nothing at this size) and the text encoder is umt5-xxl-wide but tiny behind its 4096 outputs:
# the demo DiT then loads through Load Diffusion Model + Apply LayerT2V as well as through the pack's own loader.
# A foreground is a few of the DiT's 4x4 tokens per latent frame: unweighted, its error is lost in the background's,
# so flow matching weighs latent positions under a foreground 1 + 10·alpha, and the weights shipped are an EMA
# (0.999). Both together, the same VAEs and cache, against the unweighted model without EMA on held-out prompts:
# foregrounds present in >= 95% of frames 69% against 35%, shown in the full video 83% against 72%, the prompted
# direction 23% against 17%, shape 25% against 10%, both of two foregrounds present 1 of 12 against 0; background
# texture 58% against 61%, steady path 31% both, consistency error 0.059 against 0.041, temporal flickering of the
# full video 0.9821 against 0.9841 (the truth's is 0.9780).
# The same with 8 layers (2.6 steps/s against 4.7, so stage 2 6500 steps and stage 3 1500), same cache: present in
# >= 95% of frames 73% against 69%, steady path 38% against 31%, direction 29% against 23%, consistency in alpha
# 0.148 against 0.156, flickering of the full video 0.9833 against 0.9821; but shown in the full video 81% against
# 83%, shape 23% against 25%, texture 56% against 58%, both of two foregrounds 0 of 12 against 1. At the full step
# count (9000/2000; stage 2 3659 s, stage 3 1175 s) the 8 layers are shipped: against the 4-layer model, present in
# >= 95% of frames 73% against 69%, direction 38% against 23%, shown in the full video 86% against 83%, shape 29%
# against 25%, texture 61% against 58%, consistency in alpha 0.140 against 0.156, flickering of the full video 0.9830
# against 0.9821; steady path 29% against 31% and both of two foregrounds 0 of 12 against 1 are the exceptions.
# The DiT stages leave out the alpha-decoder loss (lambda_mask 0): decoding every predicted mask through the alpha VAE
# is ~90% of a step of this small model; the quick plan keeps it on so the tests still run it.
FULL = dict(frames=17, size=64, single=600, multi=400, text_dim=4096,
            text_encoder=dict(layers=2, heads=2, d_kv=8, d_ff=32), vae_width=8, vae_foreground_weight=20.0,
            vae_temporal_weight=2.0, vae_image_steps=800, vae_image_batch=16, vae_steps=1000, vae_batch=2,
            vae_lr=2e-3, vae_clip_lr=3e-4, mask_steps=200, stage2_steps=9000, stage3_steps=2000, lambda_mask=0.0,
            batch=8, text_dropout=0.1, foreground_weight=10.0, ema_decay=0.999, foreground_captions="shape",
            travel=list(TRAVEL), dit=dict(dim=128, ffn_dim=512, num_heads=1, num_layers=8, freq_dim=256),
            eval=dict(seeds=24, two_fg_seeds=12, steps=25), fps=8.0)
QUICK = dict(frames=5, size=32, single=8, multi=6, text_dim=32, text_encoder=dict(layers=2, heads=2), vae_width=8,
             vae_foreground_weight=20.0, vae_temporal_weight=1.0, vae_image_steps=3, vae_image_batch=4, vae_steps=3,
             vae_batch=2, vae_lr=2e-3,
             vae_clip_lr=3e-4, mask_steps=3, stage2_steps=3, stage3_steps=3, lambda_mask=0.1, batch=2,
             text_dropout=0.1, foreground_weight=10.0, ema_decay=0.999, foreground_captions="shape",
             travel=list(TRAVEL), dit=dict(dim=128, ffn_dim=128, num_heads=1, num_layers=2),
             eval=dict(seeds=2, two_fg_seeds=1, steps=3), fps=8.0)
# A foreground's caption names its shape ("a red star"), or also its motion ("a red star moves left") with "shape and
# motion". The DiT ignores the prompted direction (same seed, any direction word: one path within 0.1 px), and with
# the paper's routing the foreground and alpha tokens read only their own caption; yet a build with the motion in the
# foreground captions (cache, stage 2 and stage 3 again) agreed with the direction on 15% of held-out foregrounds
# against 17%, and showed the foreground in the full video 58% of the time against 72%, so "shape" stays.
# A longer travel (0.4-0.55 of the frame, so the side a foreground starts on follows its direction) with motion in
# the foreground captions, built from nothing (92 min): direction agreed on 40% of held-out foregrounds against 17%,
# but foregrounds were present in >= 95% of frames in 15% against 35%, shown in the full video 59% against 72%,
# background texture recognised 47% against 61%, temporal flickering of the full video 0.9808 against 0.9841, so
# the travel stays (0.2, 0.4). Its contact sheets show why: the foreground fades out where its path starts and fades
# in where it ends, with nothing between (the DiT learned the two ends the direction fixes, not the motion).
DEFAULT_OUT, DEFAULT_WORK = "models/layert2v-tiny", "runs/demo"
QUICK_OUT, QUICK_WORK = "runs/demo-quick/model", "runs/demo-quick/work"  # a smoke run never touches the shipped model
PROGRESS = "build_progress.json"  # in --work: the plan and the seconds of every finished phase
PREVIOUS = "previous_evaluation.json"  # in --work: the replaced model's numbers, shown beside the new ones
CHECKPOINT_EVERY = 250  # steps; what an interrupted phase loses at most


def stage_config(plan: dict, work: Path, name: str, **options) -> "TrainConfig":  # noqa: F821
    """A TrainConfig for one step of the build, every value spelled out (the model card records them); an
    interrupted step continues from its latest checkpoint."""
    base = {"frames": plan["frames"], "height": plan["size"], "width": plan["size"], "batch_size": plan["batch"],
            "num_workers": 0, "cpu": True, "log_every": 50, "save_every": CHECKPOINT_EVERY, "keep_last": 1,
            "warmup_steps": 50, "output_dir": str(work / name), "seed": 0, "resume": "latest",
            "t_mean": 0.5}  # the demo model is trained with t = sigmoid(N(0.5, 1))
    base.update(options)
    argv = []
    for key, value in base.items():
        argv += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, list) else str(value)]
    return parse_config(name, argv)


# Each phase in build order: the plan entries it reads and the outputs (in --work) it writes. Resumed with a changed
# plan, the first phase that reads a changed entry and every phase after it run again from nothing; those before it
# stay (so a new DiT schedule reuses the VAEs and the cache).
PHASES = (
    ("synthetic data", ("frames", "size", "single", "multi", "travel"), ("data_single", "data_multi")),
    ("vae frames", ("vae_width", "vae_foreground_weight", "vae_temporal_weight", "vae_image_steps",
                    "vae_image_batch", "vae_lr"), ("vae_frames",)),
    ("vae clips", ("vae_steps", "vae_batch", "vae_clip_lr"), ("vae", "parts/vae.safetensors")),
    ("stage 1", ("mask_steps",), ("stage1", "parts/mask_vae.safetensors")),
    ("text encoder", ("text_dim", "text_encoder"), ("parts/text_encoder.safetensors",)),
    ("captions", ("foreground_captions",), ()),
    ("cache", (), ("cache_single", "cache_multi")),
    ("initial DiT", ("dit",), ("parts/dit_init.safetensors",)),  # after the cache: a new DiT shape reuses it
    ("stage 2", ("stage2_steps", "batch", "lambda_mask", "text_dropout", "foreground_weight", "ema_decay"),
     ("stage2",)),
    ("stage 3", ("stage3_steps",), ("stage3",)),
)
UNTRAINED = ("eval", "fps")  # plan entries no phase reads: the evaluation and the card follow them anyway


class Phases:
    """The build's phases, each run once: a finished phase is recorded in work/build_progress.json with its
    seconds (over every sitting it took) and skipped when the build is resumed; an unfinished training phase
    resumes from its checkpoint. A resumed build whose plan changed reruns what the change touches (`PHASES`)."""

    def __init__(self, work: Path, plan: dict, resume: bool):
        self.path = work / PROGRESS
        record = json.loads(self.path.read_text()) if resume and self.path.exists() else None
        if record is not None and record["plan"] != plan:
            record = self._replan(work, record, plan)
        self.record = record or {"plan": plan, "seconds": {}}

    def _replan(self, work: Path, record: dict, plan: dict) -> dict:
        changed = {k for k in {*plan, *record["plan"]} if plan.get(k) != record["plan"].get(k)}
        first = next((i for i, (_, keys, _) in enumerate(PHASES) if changed & set(keys)), len(PHASES))
        if first == 0:
            raise SystemExit(f"{self.path}: this build was started with another plan ({', '.join(sorted(changed))} "
                             f"changed), which changes its data; give a new --work to build from nothing")
        rerun = [name for name, _, _ in PHASES[first:]]
        for name, _, outputs in PHASES[first:]:
            record["seconds"].pop(name, None)
            record.get("interrupted_seconds", {}).pop(name, None)
            for output in outputs:  # an older plan's checkpoints must not be resumed
                if (work / output).is_dir():
                    shutil.rmtree(work / output)
                else:
                    (work / output).unlink(missing_ok=True)
        print(f"[build_demo] the plan changed ({', '.join(sorted(changed))}): running again "
              f"{', '.join(rerun) or 'no phase'}", flush=True)
        (work / PREVIOUS).unlink(missing_ok=True)  # the model this plan replaces is the one built by the old plan
        record.setdefault("replanned", []).append({"changed": sorted(changed), "rerun": rerun})
        record["plan"] = plan
        write_json(self.path, record)
        return record

    def done(self, name: str) -> bool:
        return name in self.record["seconds"]

    def run(self, name: str, work) -> None:
        if self.done(name):
            print(f"[build_demo] {name}: done before ({self.record['seconds'][name]} s)", flush=True)
            return
        started, earlier = time.perf_counter(), self.record.setdefault("interrupted_seconds", {}).get(name, 0.0)
        try:
            work()
        except BaseException:  # Ctrl-C or a failure: the time spent so far counts when the phase is resumed
            self.record["interrupted_seconds"][name] = round(earlier + time.perf_counter() - started, 1)
            write_json(self.path, self.record)
            raise
        self.record["seconds"][name] = round(earlier + time.perf_counter() - started, 1)
        self.record["interrupted_seconds"].pop(name, None)
        write_json(self.path, self.record)
        print(f"[build_demo] {name}: {self.record['seconds'][name]} s", flush=True)


def build(out: Path, work: Path, plan: dict, evaluate: bool = True, resume: bool = False) -> dict:
    if not resume and work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} holds an earlier build: continue it with --resume, or delete the folder (or give "
                         f"another --work) to start from nothing")
    work.mkdir(parents=True, exist_ok=True)
    phases = Phases(work, plan, resume)
    data1, data_multi, parts = work / "data_single", work / "data_multi", work / "parts"
    model_parts = dict(vae=str(parts / "vae.safetensors"), mask_vae=str(parts / "mask_vae.safetensors"),
                       text_encoder=str(parts / "text_encoder.safetensors"))
    size = dict(frames=plan["frames"], height=plan["size"], width=plan["size"], split="train", lossless=True)

    def data() -> None:
        for folder, samples, seed, most in ((data1, plan["single"], 1, 1), (data_multi, plan["multi"], 2, 3)):
            shutil.rmtree(folder, ignore_errors=True)  # a phase cut short left part of it
            write_dataset(folder, samples=samples, seed=seed, max_foregrounds=most, travel=plan["travel"], **size)

    def text_encoder() -> None:
        parts.mkdir(parents=True, exist_ok=True)
        sentences = example_sentences(caption_vocabulary(), count=2000) + [
            json.loads((p / "metadata.json").read_text())["captions"]["full"] for p in sorted(data1.iterdir())[:500]]
        write_text_encoder(parts / "text_encoder.safetensors", sentences, d_model=plan["text_dim"],
                           **plan["text_encoder"])

    def initial_dit() -> None:
        torch.manual_seed(0)
        save_dit(WanDiT(tiny_dit_config(plan["text_dim"], 1, **plan["dit"])), parts / "dit_init.safetensors")

    weights = dict(foreground_weight=plan["vae_foreground_weight"], temporal_weight=plan["vae_temporal_weight"])

    def vae_frames() -> None:
        cfg = stage_config(plan, work, "vae_frames", data=str(data_multi), max_foregrounds=3, frames=1,
                           batch_size=plan["vae_image_batch"], max_steps=plan["vae_image_steps"], lr=plan["vae_lr"])
        train(VAETask(cfg, width=plan["vae_width"], **weights), cfg)

    def vae_clips() -> None:
        cfg = stage_config(plan, work, "vae", data=str(data_multi), max_foregrounds=3, batch_size=plan["vae_batch"],
                           vae=str(work / "vae_frames" / "final" / "vae.safetensors"), max_steps=plan["vae_steps"],
                           lr=plan["vae_clip_lr"])
        train(VAETask(cfg, **weights), cfg)
        parts.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "vae" / "final" / "vae.safetensors", parts / "vae.safetensors")

    def stage1() -> None:
        cfg = stage_config(plan, work, "stage1", data=str(data_multi), max_foregrounds=3,
                           vae=str(parts / "vae.safetensors"), max_steps=plan["mask_steps"], lr=2e-3,
                           mask_lora_rank=8, mask_lora_alpha=8, mask_proj_hidden=16, batch_size=plan["vae_batch"])
        train(MaskVAETask(cfg), cfg)
        shutil.copy(work / "stage1" / "final" / "mask_vae.safetensors", parts / "mask_vae.safetensors")

    if plan["foreground_captions"] not in FOREGROUND_CAPTIONS:
        raise SystemExit(f"foreground_captions must be one of {', '.join(FOREGROUND_CAPTIONS)}")
    foreground_motion = FOREGROUND_CAPTIONS[plan["foreground_captions"]]

    def captions() -> None:
        for folder in (data1, data_multi):
            rewrite_captions(folder, foreground_motion)

    def cache() -> None:
        for name, folder, most in (("cache_single", data1, 1), ("cache_multi", data_multi, 3)):
            shutil.rmtree(work / name, ignore_errors=True)
            build_cache(stage_config(plan, work, name, data=str(folder), max_foregrounds=most, **model_parts),
                        work / name)

    dit_loss = {key: plan[key] for key in ("lambda_mask", "text_dropout", "foreground_weight", "ema_decay")}

    def stage2() -> None:
        cfg = stage_config(plan, work, "stage2", data=str(work / "cache_single"), max_foregrounds=1, lora_rank=0,
                           dit=str(parts / "dit_init.safetensors"), max_steps=plan["stage2_steps"], lr=1e-3,
                           warmup_steps=100, **dit_loss, **model_parts)
        train(DiTTask(cfg), cfg)

    def stage3() -> None:
        cfg = stage_config(plan, work, "stage3", data=str(work / "cache_multi"), max_foregrounds=3, lora_rank=0,
                           dit=str(work / "stage2" / "final" / "dit.safetensors"), max_steps=plan["stage3_steps"],
                           lr=5e-4, **dit_loss, **model_parts)
        train(MultiForegroundTask(cfg), cfg)

    steps = {"synthetic data": data, "text encoder": text_encoder, "initial DiT": initial_dit, "vae frames": vae_frames,
             "vae clips": vae_clips, "stage 1": stage1, "captions": captions, "cache": cache, "stage 2": stage2,
             "stage 3": stage3}
    for name, _, _ in PHASES:
        phases.run(name, steps[name])

    previous = work / PREVIOUS
    if not previous.exists() and (out / "evaluation.json").exists():
        write_json(previous, previous_summary(json.loads((out / "evaluation.json").read_text())))
    with writing_folder(out) as staging:  # the model folder is replaced whole, never left half written
        dit = load_dit(work / "stage3" / "final" / "dit.safetensors")
        (staging / DEMO_DIT).parent.mkdir()
        save_dit(dit, staging / DEMO_DIT, dtype=torch.float16)  # half the size; loaded in fp32 on CPU
        save_vae(load_vae(parts / "vae.safetensors"), staging / "vae.safetensors", dtype=torch.float16)
        for name in ("mask_vae.safetensors", "text_encoder.safetensors"):
            shutil.copy(parts / name, staging / name)
        # What generation defaults to with this model (the CLI reads it): its training size and the evaluation's
        # sampling.
        write_json(staging / GENERATION_FILE, {"frames": plan["frames"], "height": plan["size"],
                                               "width": plan["size"], "steps": plan["eval"]["steps"],
                                               "cfg": SAMPLING["guidance"], "shift": SAMPLING["shift"],
                                               "solver": SAMPLING["solver"], "fps": plan["fps"]})
        seconds = phases.record["seconds"]
        record = {"plan": plan, "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
                  "command": "python train/build_demo.py " + " ".join(sys.argv[1:]),
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  # how the phases came about when a build took more than one plan or sitting
                  **{k: phases.record[k] for k in ("replanned", "sittings") if phases.record.get(k)}}
        write_json(staging / "build.json", record)
    if evaluate:
        evaluate_and_write_card(out, work / "evaluation", frames=plan["frames"], size=plan["size"], fps=plan["fps"],
                                previous=json.loads(previous.read_text()) if previous.exists() else None,
                                foreground_motion=foreground_motion, travel=plan["travel"], **plan["eval"])
    make_readable(out)
    return record


def make_readable(folder: Path) -> None:
    """Every shipped file readable by everyone (and folders enterable): a model folder is copied between users."""
    for path in [folder, *folder.rglob("*")]:
        extra = 0o555 if path.is_dir() else 0o444
        if path.stat().st_mode & extra != extra:
            path.chmod(path.stat().st_mode | extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help=f"the model folder to write (default {DEFAULT_OUT}; with --quick {QUICK_OUT})")
    parser.add_argument("--work", help=f"data, checkpoints and logs of the build (default {DEFAULT_WORK}; with "
                                       f"--quick {QUICK_WORK})")
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes and a few steps")
    parser.add_argument("--resume", action="store_true", help="continue the build in --work where it stopped")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation and model card")
    args = parser.parse_args(argv)
    out = Path(args.out or (QUICK_OUT if args.quick else DEFAULT_OUT))
    work = Path(args.work or (QUICK_WORK if args.quick else DEFAULT_WORK))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    record = build(out, work, QUICK if args.quick else FULL, evaluate=not args.no_eval, resume=args.resume)
    print(f"[build_demo] done: {record['total_seconds']} s of training phases; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
