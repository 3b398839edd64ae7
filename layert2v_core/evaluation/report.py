"""What a reader gets: metrics.json, report.md in the shape of the paper's Table 1, a contact sheet per sample."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import replacing, write_text
from ..composite import over_background
from ..export import checkerboard
from .samples import LayeredClip

DIMENSIONS = ("aesthetic_quality", "motion_smoothness", "temporal_flickering", "subject_consistency",
              "text_alignment")
TITLES = {"aesthetic_quality": "Aesthetic Quality", "motion_smoothness": "Motion Smoothness",
          "temporal_flickering": "Temporal Flickering", "subject_consistency": "Subject Consistency",
          "text_alignment": "Text Alignment"}
LAYERS = ("FG", "BG", "BL")
LABEL_WIDTH, MIN_TILE = 84, 96
# (key in a run's aggregate, what the column says)
LAYER_COLUMNS = (
    ("fg_presence", "FG present (frames)"), ("fg_present_95", "FGs present >= 95%"),
    ("alpha_stability", "alpha IoU t/t+1"), ("trajectory_steady", "steady path (max/median step <= 2.5)"),
    ("trajectory_ratio_median", "max/median step (median)"), ("direction_agreement", "direction agrees"),
    ("alpha_sharpness", "alpha sharpness"), ("consistency", "consistency error"),
    ("consistency_in_alpha", "consistency error in alpha"), ("background_leak", "bg leak"),
    ("fg_in_full", "FG shown in full"), ("multi_all_present", "multi-FG: all present in layer and full"),
    ("separation_iou", "multi-FG: worst IoU"), ("world_colour_match", "synthetic: colour matches"),
    ("world_shape_match", "synthetic: shape recognised"), ("world_one_region", "synthetic: one region"),
    ("world_background_free_of_colour", "synthetic: bg free of fg colour"),
    ("world_bg_texture_match", "synthetic: bg texture recognised"),
    ("world_bg_colour_match", "synthetic: bg colours match"),
)


def sheet_rows(clip: LayeredClip) -> list[tuple[str, torch.Tensor]]:
    """(label, [3, T, H, W]) per row: full, background, each foreground over a checkerboard, each alpha."""
    _, _, h, w = clip.full.shape
    board = checkerboard(h, w, max(2, min(h, w) // 8))
    rows = [("full", clip.full), ("background", clip.background)]
    rows += [(f"fg{i} (RGBA)", over_background(board, [f], [a]))
             for i, (f, a) in enumerate(zip(clip.foregrounds, clip.alphas), 1)]
    rows += [(f"alpha{i}", a.expand(3, -1, -1, -1)) for i, a in enumerate(clip.alphas, 1)]
    return rows


def sheet_frames(count: int, columns: int) -> list[int]:
    """`columns` evenly spaced frame indices, first and last included."""
    if count <= columns:
        return list(range(count))
    return [round(i * (count - 1) / (columns - 1)) for i in range(columns)]


def contact_sheet(clip: LayeredClip, columns: int = 9) -> np.ndarray:
    """uint8 RGB image: rows = layers, columns = evenly spaced frames, tiles enlarged (nearest) to >= 96 px."""
    from PIL import Image, ImageDraw

    _, count, h, w = clip.full.shape
    picks = sheet_frames(count, columns)
    scale = max(1, math.ceil(MIN_TILE / min(h, w)))
    gap, header = 2, 16
    rows = sheet_rows(clip)
    tile_h, tile_w = h * scale, w * scale
    width = LABEL_WIDTH + len(picks) * (tile_w + gap)
    height = header + len(rows) * (tile_h + gap)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for r, (_, video) in enumerate(rows):
        for c, t in enumerate(picks):
            tile = (video[:, t].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            tile = tile.repeat(scale, 0).repeat(scale, 1)
            y, x = header + r * (tile_h + gap), LABEL_WIDTH + c * (tile_w + gap)
            canvas[y:y + tile_h, x:x + tile_w] = tile
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for c, t in enumerate(picks):
        draw.text((LABEL_WIDTH + c * (tile_w + gap) + 2, 2), f"t={t}", fill=(0, 0, 0))
    for r, (label, _) in enumerate(rows):
        draw.text((4, header + r * (tile_h + gap) + tile_h // 2 - 6), label, fill=(0, 0, 0))
    return np.asarray(image)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, suffix=".png") as temporary:
        Image.fromarray(image).save(temporary, format="PNG")


def cell(value) -> str:
    """A table cell: 4 decimals, a dash for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def report_markdown(report: dict) -> str:
    runs = report["runs"]
    lines = ["# Evaluation", "",
             "VBench dimensions (VBench's definitions) on each layer's own video: FG = each foreground premultiplied "
             "by its alpha (over black, the dataset's fg = video x mask), averaged over foregrounds; BG = the "
             "background; BL = the full video. Higher is better. "
             f"Models: {report['models_used']}.", ""]
    unavailable = report.get("unavailable") or {}
    for dimension, reason in unavailable.items():
        lines.append(f"- {TITLES.get(dimension, dimension)} not computed: {reason}")
    if unavailable:
        lines.append("")
    header = "| run | samples | " + " | ".join(f"{TITLES[d]} {layer}" for d in DIMENSIONS for layer in LAYERS) + " |"
    lines += [header, "|" + " --- |" * (2 + len(DIMENSIONS) * len(LAYERS))]
    for name, run in runs.items():
        table = run["aggregate"].get("vbench", {})
        cells = [cell(table.get(d, {}).get(layer)) for d in DIMENSIONS for layer in LAYERS]
        lines.append(f"| {name} | {run['aggregate']['samples']} | " + " | ".join(cells) + " |")
    lines += ["", "## Layer metrics", "",
              "Fractions of foregrounds (presence, direction) or of samples (steady path, multi-FG); errors in [0, 1] "
              "units. See `layert2v_core/evaluation/layer_metrics.py` for each definition.", "",
              "| run | " + " | ".join(title for _, title in LAYER_COLUMNS) + " |",
              "|" + " --- |" * (1 + len(LAYER_COLUMNS))]
    for name, run in runs.items():
        layer = run["aggregate"].get("layers", {})
        lines.append(f"| {name} | " + " | ".join(cell(layer.get(key)) for key, _ in LAYER_COLUMNS) + " |")
    for name, run in runs.items():
        lines += ["", f"## {name}: samples", "",
                  "| sample | FG present | max/median step | direction | consistency in alpha | sheet |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for sample, row in run["samples"].items():
            if "error" in row:
                lines.append(f"| {sample} | failed: {row['error']} | | | | |")
                continue
            fgs = row["layers"]["foregrounds"]
            lines.append(
                f"| {sample} | {' / '.join(cell(f['presence']) for f in fgs)} | "
                f"{' / '.join(cell(f['trajectory_ratio']) for f in fgs)} | "
                f"{' / '.join(cell(f.get('direction_agrees')) for f in fgs)} | "
                f"{cell(row['layers']['consistency_in_alpha'])} | "
                + (f"[png]({row['sheet']})" if row.get("sheet") else "") + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    write_text(out / "report.md", report_markdown(report))
