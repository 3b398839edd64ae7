"""Evaluate the demo model on its held-out prompt file and write its model card.

Prompts come from train/synthetic.py's evaluation split (colour-shape-background combinations never trained on),
one seed each; they ship in the model folder as `heldout_prompts.jsonl`, the file `python -m layert2v_core evaluate
--prompts` takes. The model generates every row through the CLI; the ground-truth layers of the same prompts are
written in the VidLayer layout with the same video codec, and both runs are scored by layert2v_core.evaluation.

    python train/evaluate_demo.py models/layert2v-tiny [--work runs/demo_eval]

Sizes and sampling steps default to the folder's generation.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from layert2v_core.atomic import write_json, write_text  # noqa: E402
from layert2v_core.cli import main as cli_main  # noqa: E402
from layert2v_core.evaluation import evaluate_runs, load_scorers, read_sample  # noqa: E402
from layert2v_core.evaluation.samples import sample_folders  # noqa: E402
from layert2v_core.evaluation.report import DIMENSIONS, LAYER_COLUMNS, TITLES, cell  # noqa: E402
from layert2v_core.export import preview  # noqa: E402
from layert2v_core.layered_latent import decode_videos, encode_videos  # noqa: E402
from layert2v_core.layers import LayerSpec  # noqa: E402
from layert2v_core.mask_modes import choose_mask_mode, load_mask_mode  # noqa: E402
from layert2v_core.model_folder import DEMO_DIT, find_components, generation_settings  # noqa: E402
from layert2v_core.vae import load_vae  # noqa: E402
from layert2v_core.video_io import write_animated_webp  # noqa: E402
from train.synthetic import FOREGROUND_CAPTIONS, PALETTE, TRAVEL, generate_sample, write_sample  # noqa: E402

# Guidance 2: on the previous build's held-out prompts, 4 gave 54% colour matches and 58% separated pairs, 2 gave 75%
# and 83% (1.5: 88% and 67%; 1: alphas broke into pieces).
SAMPLING = dict(steps=25, guidance=2.0, shift=3.0, solver="unipc")
PREVIEWS = 3  # samples of each foreground count shown in the model card
PREVIEW_FILE, PROMPT_FILE, REPORT_FOLDER = "samples.webp", "heldout_prompts.jsonl", "evaluation"
MODEL_RUN, TRUTH_RUN, ROUND_TRIP_RUN = "model", "ground truth", "truth through the VAEs"
PREVIOUS_RUN = "previous demo"


def heldout_samples(frames: int, size: int, seeds: int = 24, two_fg_seeds: int = 12,
                    foreground_motion: bool = False, travel: Sequence[float] = TRAVEL) -> list:
    """The held-out synthetic samples: `seeds` with one foreground, `two_fg_seeds` with two; foreground captions and
    travel as the model was trained with (`foreground_motion`, `travel`)."""
    style = dict(split="eval", foreground_motion=foreground_motion, travel=travel)
    return ([generate_sample(1000 + s, frames, size, size, num_foregrounds=1, **style) for s in range(seeds)]
            + [generate_sample(2000 + s, frames, size, size, num_foregrounds=2, **style)
               for s in range(two_fg_seeds)])


def sample_name(index: int, sample) -> str:
    return f"{index:02d}-{sample.num_foregrounds}fg-{sample.seed}"


@torch.no_grad()
def round_trip(vae, mask_vae, sample):
    """The sample's layers encoded and decoded by the model's own VAE and alpha VAE: the best its DiT could do."""
    spec = LayerSpec(sample.num_foregrounds)
    keep = {"full": sample.full, "bg": sample.background}
    for i, (foreground, alpha) in enumerate(zip(sample.foregrounds, sample.alphas), 1):
        keep.update({f"fg{i}": foreground, f"mask{i}": alpha})
    layers = decode_videos(vae, mask_vae, spec, spec.join(encode_videos(vae, mask_vae, spec, keep), dim=2))
    return dataclasses.replace(sample, full=layers["full"], background=layers["background"],
                               foregrounds=torch.stack(layers["foregrounds"]), alphas=torch.stack(layers["alphas"]))


def write_prompt_file(path: Path, samples: list) -> None:
    """One generate row per sample; the seed of row i is i."""
    rows = [{"name": sample_name(i, s), "prompt": s.captions["full"], "background": s.captions["background"],
             "foregrounds": list(s.captions["foregrounds"]), "seed": i} for i, s in enumerate(samples)]
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


@torch.no_grad()
def evaluate(folder: Path, work: Path, frames: int, size: int, seeds: int = 24, two_fg_seeds: int = 12,
             steps: int = SAMPLING["steps"], fps: float = 8.0, foreground_motion: bool = False,
             travel: Sequence[float] = TRAVEL) -> dict:
    """Generate the held-out prompt file with the model in `folder`, write the truth, score both runs."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    samples = heldout_samples(frames, size, seeds, two_fg_seeds, foreground_motion, travel)
    write_prompt_file(folder / PROMPT_FILE, samples)
    generated, truth, trip = work / "samples", work / "truth", work / "round_trip"
    for stale in (generated, truth, trip):
        shutil.rmtree(stale, ignore_errors=True)
    code = cli_main(["generate", "--model", str(folder), "--prompts", str(folder / PROMPT_FILE), "--out",
                     str(generated), "--frames", str(frames), "--height", str(size), "--width", str(size),
                     "--steps", str(steps), "--cfg", str(SAMPLING["guidance"]), "--shift", str(SAMPLING["shift"]),
                     "--solver", SAMPLING["solver"], "--fps", str(fps), "--rgba", "webm", "--quiet"])
    if code:
        raise SystemExit(f"generation of the held-out prompts failed (exit {code})")
    parts = find_components(str(folder), ("vae", "mask_vae"))
    vae = load_vae(parts.vae, dtype=torch.float32)
    mask_vae = load_mask_mode(vae, *choose_mask_mode(parts.mask_vae, None))  # the alpha codec generation uses
    for i, sample in enumerate(samples):
        write_sample(sample, truth / sample_name(i, sample), fps=fps)
        write_sample(round_trip(vae, mask_vae, sample), trip / sample_name(i, sample), fps=fps)
    scorers = load_scorers(dino=None, clip=None)  # the synthetic world has no DINO/CLIP of its own
    report = evaluate_runs({MODEL_RUN: sample_folders(generated), TRUTH_RUN: sample_folders(truth),
                            ROUND_TRIP_RUN: sample_folders(trip)}, work / "report", scorers, quiet=True)
    report["sampling"] = {**SAMPLING, "steps": steps}
    report.update(frames=frames, size=size, prompts_1=seeds, prompts_2=two_fg_seeds, prompt_file=PROMPT_FILE)
    return report


def previewed(report: dict) -> list[str]:
    """Names of the first PREVIEWS scored samples of each foreground count: the ones the model card shows."""
    names, counts = [], {}
    for name, row in report["runs"][MODEL_RUN]["samples"].items():
        if "error" not in row and counts.get(row["num_foregrounds"], 0) < PREVIEWS:
            counts[row["num_foregrounds"]] = counts.get(row["num_foregrounds"], 0) + 1
            names.append(name)
    return names


def write_previews(folder: Path, report: dict, generated: Path, fps: float, scale: int = 3) -> list[str]:
    """The previewed samples side by side (full | bg | fgs | alphas), stacked, as one animated WEBP; returns their
    prompts."""
    samples = report["runs"][MODEL_RUN]["samples"]
    picked = [(samples[name]["prompts"]["full"], preview(read_sample(generated / name))) for name in previewed(report)]
    if not picked:
        return []
    width = max(video.shape[-1] for _, video in picked)
    stacked = torch.cat([F.pad(video, (0, width - video.shape[-1])) for _, video in picked], dim=-2)
    write_animated_webp(stacked.repeat_interleave(scale, -1).repeat_interleave(scale, -2), folder / PREVIEW_FILE,
                        fps, lossless=True)
    return [prompt for prompt, _ in picked]


def copy_sheets(folder: Path, work: Path, report: dict) -> list[tuple[str, str]]:
    """Contact sheets of the previewed samples (model and truth) into the model folder; (prompt, path) pairs."""
    shipped = []
    target = folder / REPORT_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    for name in previewed(report):
        prompt = report["runs"][MODEL_RUN]["samples"][name]["prompts"]["full"]
        for run in (MODEL_RUN, TRUTH_RUN):
            sheet = report["runs"][run]["samples"].get(name, {}).get("sheet")
            if sheet:
                destination = target / f"{name}-{run.replace(' ', '_')}.png"
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(work / "report" / sheet, destination)
                shipped.append((f"{prompt} ({run})", destination.relative_to(folder).as_posix()))
    return shipped


def model_card(report: dict, build: dict | None, previews: list[str], sheets: list[tuple[str, str]]) -> str:
    model, truth = (report["runs"][r]["aggregate"] for r in (MODEL_RUN, TRUTH_RUN))
    lines = [
        "# layert2v-tiny — the embedded demo model",
        "",
        "A LayerT2V model small enough to run on a laptop CPU, trained from nothing by this repository's own code",
        "on synthetic layered videos (crisp coloured shapes moving over textured, moving backgrounds). It shows",
        "what the product does — full video, background, foregrounds and alpha mattes from one sampling pass — and it",
        "is the default model of the CLI and the ComfyUI nodes. It knows only the synthetic world: colours " +
        ", ".join(PALETTE) + "; shapes, backgrounds and motions of `train/synthetic.py`.",
        "",
        "## Parts",
        "",
        "| file | what |",
        "| --- | --- |",
        f"| {DEMO_DIT.as_posix()} | Wan2.1-architecture DiT with LayerAdaLN (up to 3 foregrounds), fp16 on disk; "
        "ComfyUI's Load Diffusion Model reads it too (time embedding 256 wide, text input 4096 wide, 128-wide "
        "heads) |",
        "| vae.safetensors | Wan2.1-architecture video VAE (trained here), latent statistics in its metadata |",
        "| mask_vae.safetensors | alpha VAE adapter (stage 1) on that VAE |",
        "| text_encoder.safetensors | umt5 encoder, 4096 wide as umt5-xxl but 2 tiny layers, + sentencepiece tokenizer "
        "for the synthetic vocabulary (random, frozen) |",
        "| generation.json | the size and sampling settings it was made for (the CLI's defaults with this model) |",
        f"| {PROMPT_FILE} | the held-out prompts it is evaluated on (`python -m layert2v_core evaluate --prompts`) |",
        "",
    ]
    if build:
        plan = build["plan"]
        lines += [
            "## How it was made",
            "",
            f"Command: `{build['command']}` ({build['total_seconds'] / 60:.1f} min on CPU, torch {build['torch']}, "
            f"{build['threads']} threads).",
            "",
            f"- data: {plan['single']} single-foreground + {plan['multi']} one-to-three-foreground synthetic samples, "
            f"{plan['size']}x{plan['size']}, {plan['frames']} frames, held-out combinations excluded; a foreground's "
            f"caption names its {plan.get('foreground_captions', 'shape')}",
            f"- VAE (Wan2.1 architecture, from scratch): width {plan['vae_width']}; {plan['vae_image_steps']} steps "
            f"on batches of {plan['vae_image_batch']} single frames at lr {plan['vae_lr']}, then "
            f"{plan['vae_steps']} on batches of {plan['vae_batch']} {plan['frames']}-frame clips at lr "
            f"{plan['vae_clip_lr']}; L1 with foreground pixels weighted 1 + {plan['vae_foreground_weight']}·alpha, "
            f"plus {plan.get('vae_temporal_weight', 0)} x the same L1 on frame-to-frame differences (clips). "
            f"Stage 1 (alpha VAE): {plan['mask_steps']} steps",
            f"- DiT: {plan['dit']}, text dim {plan['text_dim']} (umt5 {plan.get('text_encoder', {})}); stage 2 "
            f"(full weights, single foreground): {plan['stage2_steps']} steps; stage 3 (up to 3 foregrounds): "
            f"{plan['stage3_steps']} steps; batch {plan['batch']}; lambda_mask {plan['lambda_mask']}; "
            f"{plan.get('text_dropout', 0):g} of the samples on the negative prompt; flow matching weighs latent "
            f"positions under a foreground 1 + {plan.get('foreground_weight', 0):g}·alpha; weights kept as an EMA "
            f"with decay {plan.get('ema_decay', 0):g} (0: none) (see train/build_demo.py)",
            "- seconds per phase of the build: " + ", ".join(f"{k} {v}" for k, v in build["seconds"].items()),
            *[f"- the plan changed ({', '.join(r['changed'])}) and the build ran again: {', '.join(r['rerun'])}; the "
              f"phases before them were kept" for r in build.get("replanned", [])],
            *[f"- {note}" for note in build.get("sittings", [])],
            "",
        ]
    s = report["sampling"]
    layer = model["layers"]
    runs = card_runs(report)
    lines += [
        "## Evaluation (held-out synthetic prompts)",
        "",
        f"{report['prompts_1']} single-foreground and {report['prompts_2']} two-foreground prompts of "
        f"`{PROMPT_FILE}`, one seed each; {s['steps']} {s['solver']} steps, guidance {s['guidance']}, shift "
        f"{s['shift']}; {report['size']}x{report['size']}, {report['frames']} frames. Scored by "
        "`layert2v_core.evaluation` (VBench's definitions; the synthetic world has no DINO or CLIP of its own, so "
        "subject consistency, aesthetic quality and text alignment are not computed here). Columns: this model; "
        f"the {PREVIOUS_RUN} model (where known), scored the same way on its own held-out file; the ground-truth "
        "layers of these prompts, written with the same codec (so the truth column is also the accuracy of the "
        "shape and texture classifiers); and that truth passed through this model's VAE and alpha VAE, the best its "
        "DiT could reach. Regenerate with `python train/evaluate_demo.py models/layert2v-tiny`.",
        "",
        f"In words: {layer['fg_present_95']:.0%} of foregrounds are present (opaque area at least half their "
        f"median) in at least 95% of their frames (truth: {truth['layers']['fg_present_95']:.0%}); "
        f"{layer['trajectory_steady']:.0%} move steadily (largest centroid step at most 2.5x the median) and "
        f"{_pct(layer['direction_agreement'])} move the prompted way; the prompted shape is recognised in "
        f"{_pct(layer.get('world_shape_match'))} and the background's texture in "
        f"{_pct(layer.get('world_bg_texture_match'))}.",
        "",
        "| run | " + " | ".join(f"{TITLES[d]} {x}" for d in DIMENSIONS if d in model["vbench"]
                               for x in ("FG", "BG", "BL")) + " |",
        "|" + " --- |" * (1 + 3 * len(model["vbench"])),
    ]
    for run, table in runs.items():
        lines.append(f"| {run} | " + " | ".join(cell(table["vbench"].get(d, {}).get(x)) for d in DIMENSIONS
                                              if d in model["vbench"] for x in ("FG", "BG", "BL")) + " |")
    lines += ["", "| metric | " + " | ".join(runs) + " |", "|" + " --- |" * (1 + len(runs))]
    for key, title in LAYER_COLUMNS:
        values = [table["layers"].get(key) for table in runs.values()]
        if any(v is not None for v in values):
            lines.append(f"| {title} | " + " | ".join(cell(v) for v in values) + " |")
    lines += ["", "Definitions: `layert2v_core/evaluation/layer_metrics.py`. Every number per sample: "
              "`evaluation.json`.", ""]
    if previews:
        lines += ["## Samples", "", f"![held-out samples]({PREVIEW_FILE})", "",
                  "Each row, left to right: full video, background, each foreground over a checkerboard, each alpha. "
                  "Prompts, top to bottom:", "", *[f"{i}. {p}" for i, p in enumerate(previews, start=1)], ""]
    if sheets:
        lines += ["Contact sheets (rows = layers, columns = frames), model and ground truth of the same prompt:", "",
                  *[f"- [{prompt}]({path})" for prompt, path in sheets], ""]
    lines += [
        "## What it can and cannot do",
        "",
        f"It can: make {report['size']}x{report['size']}, {report['frames']}-frame layered clips (full video, clean "
        "background, one to three foregrounds with alpha) of prompts written in its synthetic vocabulary, in seconds "
        "on a CPU; on held-out prompts (combinations it never saw) the numbers above say how often the foreground "
        "stays present, moves the prompted way and keeps the prompted shape, and how often the background shows the "
        "prompted texture. Prompts combining two foregrounds work; three are accepted but not evaluated.",
        "",
        "It cannot: show anything outside that world (its text encoder knows only the synthetic words, and it has "
        "never seen natural video), follow a motion other than left, right, up or down, or give a quality worth "
        "judging at other sizes and lengths than the ones above (they run, untrained). Use it to try the workflow, "
        "the CLI and the nodes; use Wan2.1 + a LayerT2V adapter for real work.",
    ]
    return "\n".join(lines) + "\n"


def previous_summary(report: dict) -> dict:
    """What the card shows of a replaced model, from its evaluation.json."""
    return {"aggregate": report["runs"][MODEL_RUN]["aggregate"], "size": report["size"], "frames": report["frames"],
            "sampling": report["sampling"]}


def card_runs(report: dict) -> dict[str, dict]:
    """Aggregates shown in the card, by column: model, previous demo (if recorded), truth, truth through the VAEs."""
    runs = {MODEL_RUN: report["runs"][MODEL_RUN]["aggregate"]}
    if report.get("previous"):
        runs[f"{PREVIOUS_RUN} ({report['previous']['size']}x{report['previous']['size']}, "
             f"{report['previous']['frames']} frames)"] = report["previous"]["aggregate"]
    for run in (TRUTH_RUN, ROUND_TRIP_RUN):
        if run in report["runs"]:
            runs[run] = report["runs"][run]["aggregate"]
    return runs


def _pct(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def evaluate_and_write_card(folder: Path, work: Path, frames: int, size: int, fps: float = 8.0,
                            previous: dict | None = None, **counts) -> dict:
    """Evaluate (counts: seeds, two_fg_seeds, steps, foreground_motion, travel); write evaluation.json, previews,
    contact sheets and README.md.

    previous: the evaluation.json of the model this one replaces, shown beside it (default: the one the folder's
    own evaluation.json carries)."""
    folder, work = Path(folder), Path(work)
    if previous is None and (folder / "evaluation.json").exists():
        previous = json.loads((folder / "evaluation.json").read_text()).get("previous")
    report = evaluate(folder, work, frames, size, fps=fps, **counts)
    if previous:
        report["previous"] = {key: previous[key] for key in ("aggregate", "size", "frames", "sampling")}
    write_json(folder / "evaluation.json", report)
    previews = write_previews(folder, report, work / "samples", fps)
    sheets = copy_sheets(folder, work, report)
    build = json.loads((folder / "build.json").read_text()) if (folder / "build.json").exists() else None
    write_text(folder / "README.md", model_card(report, build, previews, sheets))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--work", default="runs/demo_eval", help="generated samples, truth and the full report")
    parser.add_argument("--frames", type=int, help="default: the folder's generation.json, else 9")
    parser.add_argument("--size", type=int, help="default: the folder's generation.json height, else 48")
    args = parser.parse_args(argv)
    settings = generation_settings(args.folder)
    build = Path(args.folder) / "build.json"  # the caption style and travel the model was trained with
    plan = json.loads(build.read_text())["plan"] if build.is_file() else {}
    report = evaluate_and_write_card(Path(args.folder), Path(args.work), args.frames or settings.get("frames", 9),
                                     args.size or settings.get("height", 48), fps=settings.get("fps", 8.0),
                                     steps=settings.get("steps", SAMPLING["steps"]),
                                     foreground_motion=FOREGROUND_CAPTIONS[plan.get("foreground_captions", "shape")],
                                     travel=plan.get("travel", TRAVEL))
    print(json.dumps({run: r["aggregate"] for run, r in report["runs"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
