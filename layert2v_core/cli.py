"""`python -m layert2v_core generate`: layered videos from prompts, one output folder per sample.

Many prompts: `--prompts file.jsonl`, one JSON object per line with `prompt` and optional `background`,
`foregrounds` (list), `negative`, `seed`, `name`, `keep` ({layer: video path}). Started with `accelerate launch`
on several GPUs or machines, each process takes every k-th row. The whole request (every row, every setting, the
output folder, the kept clips) is checked before any weight loads (`request.py`).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from .dit import ROPE_MODES
from .layers import MAX_FOREGROUNDS, ROUTING_POLICIES
from .mask_modes import MASK_MODES
from .request import PROMPTS_FORMAT, RequestError
from .sampling import SOLVERS

DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Sampling settings for a model folder without a generation.json: Wan2.1 T2V 1.3B's.
WAN_SETTINGS = {"frames": 41, "height": 384, "width": 672, "steps": 50, "cfg": 5.0, "shift": 5.0, "solver": "unipc",
                "fps": 16.0}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, empty or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default in ("", []) or \
                "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layert2v_core", description="LayerT2V: layered video generation")
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("generate", help="generate full video, background, foregrounds and alphas",
                            formatter_class=_HelpFormatter, epilog=f"--prompts file: {PROMPTS_FORMAT}. Rows "
                            f"without a seed take --seed plus their row number; without a name, the next free "
                            f"NNNN-prompt folder in --out.")
    m = g.add_argument_group("model (a folder, or each part; default: the embedded demo model)")
    m.add_argument("--model", help="folder holding the DiT, VAE, alpha VAE, text encoder (and adapter)")
    for part in ("dit", "adapter", "vae", "mask-vae", "text-encoder"):
        m.add_argument(f"--{part}", help=f"path of the {part.replace('-', ' ')} (overrides the folder's)")
    m.add_argument("--mask-mode", choices=MASK_MODES, help="how mattes are decoded (default: the alpha VAE file's, "
                                                           "else the official run config's, else vae: the plain "
                                                           "Wan VAE, no file). mask-vae-project / mask-vae-joint: "
                                                           "the official mask_vae.pt as --mask-vae, with "
                                                           "mask_vae_projects.pt in the --adapter folder or "
                                                           "beside mask_vae.pt")
    m.add_argument("--ema", action="store_true", help="use the EMA weights of an official checkpoint folder "
                                                       "(ema/ema_model.pt beside the adapter; the authors recommend "
                                                       "them)")
    m.add_argument("--rope", choices=ROPE_MODES, help="DiT RoPE; 4d: the official layer-time-height-width one "
                                                      "(default: what the adapter records, else 3d)")
    p = g.add_argument_group("prompts")
    p.add_argument("--prompt", help="the full-video prompt")
    p.add_argument("--background", default="", help="background prompt (empty: a generic default)")
    p.add_argument("--foreground", action="append", default=[], help="a foreground prompt; repeat for several")
    p.add_argument("--foregrounds", type=int, help=f"number of foregrounds 1..{MAX_FOREGROUNDS} (default: as many "
                                                   f"as --foreground, else 1)")
    p.add_argument("--negative", default="", help="negative prompt (empty: Wan's default)")
    p.add_argument("--prompts", help="jsonl file, one sample per line: {\"prompt\", \"background\", "
                                     "\"foregrounds\": [...], \"seed\", \"name\", \"keep\"} (see below)")
    s = g.add_argument_group("sampling (unset values: the model folder's generation.json, else Wan2.1's)")
    own = dict(default=argparse.SUPPRESS)
    s.add_argument("--frames", type=int, help="frames, 4k+1 (Wan2.1: 41)", **own)
    s.add_argument("--height", type=int, help="multiple of 16 (Wan2.1: 384)", **own)
    s.add_argument("--width", type=int, help="multiple of 16 (Wan2.1: 672)", **own)
    s.add_argument("--steps", type=int, help="sampling steps (Wan2.1: 50)", **own)
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale (Wan2.1: 5)", **own)
    s.add_argument("--shift", type=float, help="sigma shift of the flow schedule (Wan2.1: 5)", **own)
    s.add_argument("--solver", choices=SOLVERS, help="(Wan2.1: unipc)", **own)
    s.add_argument("--seed", type=int, default=0, help="noise seed of the first sample (the next ones count up)")
    s.add_argument("--policy", choices=ROUTING_POLICIES, help="routing policy (default: the checkpoint's)")
    s.add_argument("--keep", action="append", default=[], metavar="LAYER=VIDEO",
                   help="keep a given layer, e.g. bg=clip.mp4, full=shot.mp4, fg1=subject_rgba.webm (RGBA files "
                        "also give mask1), mask1=matte.mp4")
    s.add_argument("--strength", type=float, default=0.0, help="0 keeps given layers exactly; up to 1 lets them move")
    o = g.add_argument_group("output and device")
    o.add_argument("--out", default="outputs", help="output folder (one sub-folder per sample)")
    o.add_argument("--overwrite", action="store_true", help="replace sample folders of the same name (default: "
                                                            "take the next free name)")
    o.add_argument("--fps", type=float, help="frame rate of the saved videos (Wan2.1: 16)", **own)
    o.add_argument("--rgba", default="webm,mov", help="RGBA formats among webm, mov, png (comma-separated)")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="compute device")
    o.add_argument("--dtype", choices=list(DTYPES), default="auto", help="DiT / text encoder weight dtype")
    o.add_argument("--no-offload", action="store_true", help="keep every part on the device (more memory, faster)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    from .evaluation.command import add_parser as add_evaluate_parser
    add_evaluate_parser(commands)
    return parser


def generate(args) -> int:
    from .export import save_layers
    from .model_folder import demo_model_folder, find_components, generation_settings, load_pipeline
    from .request import check_kept_clips, check_settings, load_kept_layers, read_jobs, sample_names
    from .weights import file_hash

    jobs = read_jobs(args)
    rgba = [f.strip() for f in args.rgba.split(",") if f.strip()]
    folder = args.model or (None if any([args.dit, args.vae, args.mask_vae, args.text_encoder])
                            else demo_model_folder())
    paths = find_components(folder, dit=args.dit, adapter=args.adapter, vae=args.vae, mask_vae=args.mask_vae,
                            text_encoder=args.text_encoder)
    for key, value in {**WAN_SETTINGS, **generation_settings(folder)}.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    check_settings(args)
    check_kept_clips(jobs, args)
    sample_names(jobs, Path(args.out), args.overwrite)
    if folder is not None and not args.model:
        print(f"model: the embedded demo model ({folder.name}, synthetic shapes only; --model picks another), "
              f"{args.width}x{args.height}, {args.frames} frames, {args.steps} steps", file=sys.stderr)
    rank, world = 0, 1
    try:  # under `accelerate launch`, split the jobs across processes
        from accelerate import PartialState
        state = PartialState(cpu=args.device == "cpu")
        rank, world = state.process_index, state.num_processes
        device = state.device if world > 1 else torch.device(args.device)
    except ImportError:
        device = torch.device(args.device)
    jobs = jobs[rank::world]
    started = time.perf_counter()
    _show_loading_messages()
    pipe = load_pipeline(paths, device=device, dtype=DTYPES[args.dtype], offload=not args.no_offload,
                         rope=args.rope, mask_mode=args.mask_mode, ema=args.ema or None)
    hashes = {part: file_hash(p) for part, p in vars(paths).items() if p is not None}
    for job in jobs:
        keep = load_kept_layers(job.get("keep") or {}, args.frames, args.height, args.width, notes=False)
        bar = None if args.quiet else _progress(job["folder"])
        result = pipe(job["prompt"], job.get("background", ""), job["foregrounds"], job.get("negative", ""),
                      frames=args.frames, height=args.height, width=args.width, steps=args.steps, guidance=args.cfg,
                      shift=args.shift, solver=args.solver, seed=int(job["seed"]), policy=args.policy, keep=keep,
                      strength=args.strength, callback=bar)
        out = Path(args.out) / job["folder"]
        save_layers(result, out, fps=args.fps, rgba_formats=rgba,
                    manifest={"models": paths.as_dict(), "model_hashes": hashes, "device": str(device)})
        print(f"{out}: {result.spec.num_foregrounds} foreground(s), layer consistency error "
              f"{result.consistency_error():.4f}", flush=True)
    print(f"done: {len(jobs)} sample(s) in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


def _show_loading_messages() -> None:
    """Print what the loaders found and used (e.g. an official run's config.yaml) on stderr."""
    logger = logging.getLogger("layert2v_core")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _progress(name: str):
    """A per-step progress line on stderr (the sampler's callback)."""
    def callback(step: int, total: int, x, denoised) -> None:
        width = 30
        done = int(width * step / total)
        sys.stderr.write(f"\r{name[:30]:30s} [{'#' * done}{'.' * (width - done)}] {step}/{total}")
        if step == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return callback


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        try:
            return generate(args)
        except (RequestError, ValueError, FileNotFoundError) as err:
            raise SystemExit(f"error: {err}")
    if args.command == "evaluate":
        from .evaluation.command import run as evaluate
        return evaluate(args)
    return 2
