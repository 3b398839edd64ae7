"""Score runs of layered samples: the VBench dimensions per layer, the layer metrics, contact sheets and reports."""
from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from ..atomic import write_json
from ..composite import premultiply
from . import vbench
from .feature_models import (CLIP_ID, DINO_ID, ClipFeatures, DinoFeatures, ModelUnavailable, load_aesthetic_head)
from .interpolation import DEFAULT_INTERPOLATOR, get_interpolator
from .layer_metrics import clip_layer_metrics
from .report import DIMENSIONS, contact_sheet, write_png, write_report
from .samples import LayeredClip, read_sample, sample_folders
from .synthetic_world import background_world_metrics, foreground_world_metrics
from .viclip import ViClipFeatures

STEADY_RATIO, PRESENT = 2.5, 0.95


@dataclass
class Scorers:
    """The models behind the model-backed dimensions; a dimension whose model is missing is listed in
    `unavailable` with the reason, never scored by another model."""

    interpolator_name: str = DEFAULT_INTERPOLATOR
    dino: DinoFeatures | None = None
    clip: ClipFeatures | None = None
    aesthetic: torch.nn.Module | None = None
    viclip: ViClipFeatures | None = None
    unavailable: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.interpolate = get_interpolator(self.interpolator_name)

    @property
    def used(self) -> dict:
        return {"temporal_flickering": "none (frame differences)",
                "motion_smoothness": f"interpolator {self.interpolator_name}",
                "subject_consistency": self.dino.name if self.dino else None,
                "aesthetic_quality": f"{self.clip.name} + LAION linear head" if self.clip and self.aesthetic else None,
                "text_alignment": (f"{self.viclip.name} (VBench overall_consistency)" if self.viclip else
                                   f"clip-frame-average ({self.clip.name}; VBench uses ViCLIP)" if self.clip else None)}

    @property
    def text_model(self) -> ViClipFeatures | ClipFeatures | None:
        return self.viclip or self.clip


def load_scorers(dino: str | None = DINO_ID, clip: str | None = CLIP_ID, aesthetic: str | None = None,
                 interpolator: str = DEFAULT_INTERPOLATOR, device: str = "cpu", strict: bool = False,
                 viclip: str | None = None, viclip_tokenizer: str = CLIP_ID) -> Scorers:
    """Load what is available. A model named explicitly (strict, or not the default id) must load; a default one
    that is not in the hub cache is recorded as unavailable. None skips that model. A ViCLIP checkpoint, when
    given, must load and scores text alignment in place of CLIP."""
    scorers = Scorers(interpolator)
    if viclip is not None:  # asked for by name: it loads or the run stops, before the other models load
        scorers.viclip = ViClipFeatures(viclip, viclip_tokenizer, device)

    def attempt(what: str, dimensions: tuple[str, ...], default, value, build):
        if value is None:
            for d in dimensions:
                scorers.unavailable[d] = f"{what} not requested"
            return None
        try:
            return build(value)
        except ModelUnavailable as error:
            if strict or value != default:
                raise
            for d in dimensions:
                scorers.unavailable[d] = str(error)
            return None

    scorers.dino = attempt("DINO", ("subject_consistency",), DINO_ID, dino, lambda v: DinoFeatures(v, device))
    scorers.clip = attempt("CLIP", ("aesthetic_quality", "text_alignment"), CLIP_ID, clip,
                           lambda v: ClipFeatures(v, device))
    if scorers.clip is not None:
        if aesthetic is None:
            scorers.unavailable["aesthetic_quality"] = "no LAION aesthetic head given (--aesthetic FILE)"
        else:
            scorers.aesthetic = load_aesthetic_head(aesthetic, dim=scorers.clip.model.config.projection_dim)
    if scorers.viclip is not None:
        scorers.unavailable.pop("text_alignment", None)
    return scorers


def layer_videos(clip: LayeredClip) -> dict[str, list[tuple[torch.Tensor, str]]]:
    """(video, prompt) per scored layer: FG each foreground premultiplied (over black), BG, BL the full video."""
    fg_prompts = clip.prompts.get("foregrounds") or [""] * clip.num_foregrounds
    return {"FG": [(premultiply(f, a), p) for f, a, p in zip(clip.foregrounds, clip.alphas, fg_prompts)],
            "BG": [(clip.background, clip.prompts.get("background", ""))],
            "BL": [(clip.full, clip.prompts.get("full", ""))]}


def vbench_scores(clip: LayeredClip, scorers: Scorers) -> dict:
    """{dimension: {"FG": score, "BG": score, "BL": score}} for every dimension that can be computed."""
    table: dict = {d: {} for d in DIMENSIONS if d not in scorers.unavailable}
    for layer, videos in layer_videos(clip).items():
        scores: dict[str, list[float]] = {d: [] for d in table}
        for video, prompt in videos:
            frames = vbench.to_frames(video)
            scores["temporal_flickering"].append(vbench.temporal_flickering(frames))
            scores["motion_smoothness"].append(vbench.motion_smoothness(frames, scorers.interpolate))
            if "subject_consistency" in table:
                scores["subject_consistency"].append(vbench.subject_consistency(scorers.dino(frames)))
            if "aesthetic_quality" in table:
                scores["aesthetic_quality"].append(vbench.aesthetic_quality(scorers.clip.images(frames),
                                                                            scorers.aesthetic))
            if "text_alignment" in table and prompt:
                scores["text_alignment"].append(vbench.text_alignment(scorers.text_model.video(frames),
                                                                      scorers.text_model.text(prompt)))
        for d, values in scores.items():
            if values:
                table[d][layer] = statistics.mean(values)
    return table


def evaluate_clip(clip: LayeredClip, scorers: Scorers) -> dict:
    clip.check()
    layers = clip_layer_metrics(clip)
    captions = clip.prompts.get("foregrounds") or [""] * clip.num_foregrounds
    for row, foreground, alpha, caption in zip(layers["foregrounds"], clip.foregrounds, clip.alphas, captions):
        world = foreground_world_metrics(clip.background, foreground, alpha, caption)
        if world is not None:
            row["synthetic_world"] = world
    world = background_world_metrics(clip.background, clip.prompts.get("background", ""))
    if world is not None:
        layers["synthetic_world_background"] = world
    return {"source": clip.source, "num_foregrounds": clip.num_foregrounds, "prompts": clip.prompts,
            "frames": int(clip.full.shape[1]), "size": list(clip.full.shape[-2:]),
            "vbench": vbench_scores(clip, scorers), "layers": layers}


def _mean(values: Iterable) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(statistics.mean(values), 4) if values else None


def aggregate(rows: list[dict]) -> dict:
    """Run-level numbers from per-sample rows (failed samples are counted, not scored)."""
    good = [r for r in rows if "error" not in r]
    vbench_table = {}
    for d in DIMENSIONS:
        cells = {layer: _mean(r["vbench"].get(d, {}).get(layer) for r in good) for layer in ("FG", "BG", "BL")}
        if any(v is not None for v in cells.values()):
            vbench_table[d] = cells
    fgs = [f for r in good for f in r["layers"]["foregrounds"]]
    ratios = [f["trajectory_ratio"] for f in fgs]
    directed = [f for f in fgs if f.get("direction") is not None]
    multi = [r for r in good if r["num_foregrounds"] > 1]
    layers = {
        "fg_presence": _mean(f["presence"] for f in fgs),
        "fg_present_95": _mean(float(f["presence"] >= PRESENT) for f in fgs),
        "alpha_stability": _mean(f["alpha_stability"] for f in fgs),
        "trajectory_steady": _mean(float(r is not None and r <= STEADY_RATIO) for r in ratios),
        "trajectory_ratio_median": (round(statistics.median(r for r in ratios if r is not None), 4)
                                    if any(r is not None for r in ratios) else None),
        "direction_agreement": _mean(float(f["direction_agrees"]) for f in directed),
        "alpha_sharpness": _mean(f["alpha_sharpness"] for f in fgs),
        "consistency": _mean(r["layers"]["consistency"] for r in good),
        "consistency_in_alpha": _mean(r["layers"]["consistency_in_alpha"] for r in good),
        "background_leak": _mean(f["background_leak"] for f in fgs),
        "fg_in_full": _mean(f["presence_in_full"] for f in fgs),
        "multi_all_present": _mean(float(all(f["presence"] >= PRESENT and f["presence_in_full"] >= PRESENT
                                             for f in r["layers"]["foregrounds"])) for r in multi),
        "separation_iou": _mean(r["layers"].get("separation_iou") for r in multi),
    }
    world = [f["synthetic_world"] for f in fgs if "synthetic_world" in f]
    if world:
        layers.update({f"world_{key}": _mean(float(w[key]) for w in world) for key in world[0]})
    world = [r["layers"]["synthetic_world_background"] for r in good if "synthetic_world_background" in r["layers"]]
    if world:
        layers.update({f"world_bg_{key}": _mean(float(w[key]) for w in world) for key in world[0]})
    return {"samples": len(rows), "failed": len(rows) - len(good), "vbench": vbench_table, "layers": layers}


def _progress(items: list, description: str, quiet: bool):
    if quiet:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit="sample", file=sys.stderr)


def evaluate_runs(runs: dict[str, list[Path]], out: str | Path, scorers: Scorers, sheets: bool = True,
                  quiet: bool = False) -> dict:
    """Score every sample folder of every run; write metrics.json, report.md and sheets/<run>/<sample>.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"runs": {}, "models_used": scorers.used, "unavailable": scorers.unavailable,
              "fg_scoring": "each foreground premultiplied by its alpha (over black), averaged over foregrounds"}
    for name, folders in runs.items():
        samples: dict[str, dict] = {}
        for folder in _progress(folders, name, quiet):
            key = folder.name if folder.name not in samples else f"{folder.parent.name}/{folder.name}"
            try:
                clip = read_sample(folder)
                row = evaluate_clip(clip, scorers)
                if sheets:
                    sheet = Path("sheets") / name / f"{key.replace('/', '_')}.png"
                    write_png(out / sheet, contact_sheet(clip))
                    row["sheet"] = sheet.as_posix()
            except (ValueError, OSError, RuntimeError) as error:  # one bad sample is reported, not fatal
                row = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
                print(f"{folder}: {row['error']}", file=sys.stderr)
            samples[key] = row
        report["runs"][name] = {"samples": samples, "aggregate": aggregate(list(samples.values()))}
    write_json(out / "metrics.json", report)
    write_report(report, out)
    return report


def runs_from_paths(paths: list[str]) -> dict[str, list[Path]]:
    """One run per argument, named by its folder (a sample folder or a folder of them)."""
    runs: dict[str, list[Path]] = {}
    for path in paths:
        path = Path(path)
        name = path.resolve().name or "run"
        while name in runs:
            name += "'"
        runs[name] = sample_folders(path)
    return runs
