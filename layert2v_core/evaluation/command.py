"""`python -m layert2v_core evaluate`: score sample folders, or generate a prompt file with a model and score it."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .feature_models import AESTHETIC_FILE, CLIP_ID, DINO_ID
from .interpolation import DEFAULT_INTERPOLATOR, INTERPOLATORS
from .viclip import VICLIP_FILE


def add_parser(commands) -> argparse.ArgumentParser:
    e = commands.add_parser(
        "evaluate", help="score layered samples: VBench dimensions per layer, layer metrics, contact sheets",
        description="Score runs of layered samples. Each SAMPLES argument is a run: a sample folder written by "
                    "generate / Save Layers, a VidLayer sample folder, or a folder of either. With --prompts, the "
                    "model generates every row of the prompt file first (seeds from the file) and that run is scored "
                    "too. Writes OUT/metrics.json, OUT/report.md and OUT/sheets/<run>/<sample>.png.")
    e.add_argument("samples", nargs="*", metavar="SAMPLES", help="runs to score")
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--prompts", help="jsonl prompt file (generate's format) to generate and score")
    e.add_argument("--model", help="model folder for --prompts (default: the embedded demo model)")
    e.add_argument("--steps", type=int, help="sampling steps for --prompts (default: the model's)")
    e.add_argument("--dino", default=DINO_ID, help=f"DINO ViT-B/16 folder or cached hub id (default {DINO_ID}; "
                                                   "skipped with a note when not cached)")
    e.add_argument("--clip", default=CLIP_ID, help=f"CLIP ViT-L/14 folder or cached hub id (default {CLIP_ID})")
    e.add_argument("--aesthetic", help=f"LAION aesthetic head ({AESTHETIC_FILE} or .safetensors)")
    e.add_argument("--viclip", help=f"ViCLIP checkpoint ({VICLIP_FILE} or .safetensors): text alignment as VBench's "
                                    "overall_consistency (default: CLIP frame-average, labelled as such)")
    e.add_argument("--viclip-tokenizer", default=CLIP_ID,
                   help=f"folder or cached hub id with CLIP's BPE vocabulary for --viclip (default {CLIP_ID})")
    e.add_argument("--no-models", action="store_true", help="only the model-free dimensions and layer metrics")
    e.add_argument("--interpolator", default=DEFAULT_INTERPOLATOR,
                   help=f"motion-smoothness interpolator: {', '.join(INTERPOLATORS)} or module:function "
                        f"(default {DEFAULT_INTERPOLATOR})")
    e.add_argument("--device", default="cpu")
    e.add_argument("--no-sheets", action="store_true", help="skip the contact sheets")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    return e


def generate_run(prompts: str, model: str | None, out: Path, steps: int | None, quiet: bool) -> Path:
    """Generate every row of a prompt file into out (one sample folder per row) with the CLI's own generate."""
    from ..cli import main as cli_main

    argv = ["generate", "--prompts", prompts, "--out", str(out), "--rgba", "webm"]
    argv += ["--model", model] if model else []
    argv += ["--steps", str(steps)] if steps else []
    argv += ["--quiet"] if quiet else []
    code = cli_main(argv)
    if code:
        raise SystemExit(f"generating {prompts} failed (exit {code})")
    return out


def run(args: argparse.Namespace) -> int:
    from .evaluate import load_scorers, evaluate_runs, runs_from_paths

    if not args.samples and not args.prompts:
        raise SystemExit("evaluate: give sample folders to score, or --prompts FILE (with --model)")
    out = Path(args.out)
    started = time.perf_counter()
    try:  # everything a typo could break is checked before any model loads or sample is generated
        runs = runs_from_paths(args.samples)
        if args.prompts and not Path(args.prompts).is_file():
            raise FileNotFoundError(f"--prompts {args.prompts}: no such file")
        if args.no_models and args.viclip:
            raise ValueError("--viclip asks for a model and --no-models for none: drop one of them")
        none = dict(dino=None, clip=None) if args.no_models else dict(dino=args.dino, clip=args.clip)
        scorers = load_scorers(aesthetic=args.aesthetic, interpolator=args.interpolator, device=args.device,
                               viclip=args.viclip, viclip_tokenizer=args.viclip_tokenizer, **none)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise SystemExit(f"evaluate: {error}")
    for dimension, reason in scorers.unavailable.items():
        print(f"note: {dimension} not computed: {reason}", file=sys.stderr)
    if args.prompts:
        name = Path(args.model).resolve().name if args.model else "layert2v-tiny"
        generated = generate_run(args.prompts, args.model, out / "samples" / name, args.steps, args.quiet)
        runs = {name: runs_from_paths([str(generated)])[generated.name], **runs}
    report = evaluate_runs(runs, out, scorers, sheets=not args.no_sheets, quiet=args.quiet)
    for name, run_report in report["runs"].items():
        print(f"{name}: {json.dumps(run_report['aggregate'], sort_keys=True)}")
    print(f"wrote {out / 'report.md'} and {out / 'metrics.json'} in {time.perf_counter() - started:.1f} s")
    return 0
