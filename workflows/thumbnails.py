"""Template-browser thumbnails from what each template graph really produced in ComfyUI.

    python workflows/thumbnails.py --output path/to/ComfyUI/output

Run the template graphs first (the Run button, or POST workflows/api/*.json). For each template this takes the newest
output of its last save node: a Save Layers folder gives its labelled preview, tiles rearranged into a near-square
grid; a Save Animated WEBP gives its frames scaled up (nearest neighbour). The middle frame becomes
example_workflows/<template title>.jpg, the file name ComfyUI's template browser asks for.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workflows.build import DEMO, TEMPLATE_TITLES, api_path, workflows_of  # noqa: E402

SIDE = 512  # thumbnails are at least this wide


def middle_frame(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.seek(getattr(image, "n_frames", 1) // 2)
        return image.convert("RGB")


def grid(strip: Image.Image, tiles: int) -> Image.Image:
    """A left-to-right strip of `tiles` equal tiles -> rows of ceil(tiles / 2) columns (2 x 2 for one foreground)."""
    width, height = strip.width // tiles, strip.height
    columns = math.ceil(tiles / 2)
    rows = math.ceil(tiles / columns)
    out = Image.new("RGB", (columns * width, rows * height), (34, 34, 34))
    for i in range(tiles):
        out.paste(strip.crop((i * width, 0, (i + 1) * width, height)), ((i % columns) * width, (i // columns) * height))
    return out


def newest(output: Path, prefix: str, pattern: str) -> Path:
    folder, stem = (output / prefix).parent, Path(prefix).name
    found = sorted(folder.glob(f"{stem}_{pattern}"))
    if not found:
        raise SystemExit(f"no output {prefix}_{pattern} in {output}: run the template graphs first")
    return found[-1]


def thumbnail(graph: dict, output: Path) -> Image.Image:
    saves = [n for n in graph.values() if n["class_type"] in ("LayerT2VSaveLayers", "SaveAnimatedWEBP")]
    layers = [n for n in saves if n["class_type"] == "LayerT2VSaveLayers"]
    if layers:
        folder = newest(output, layers[-1]["inputs"]["filename_prefix"], "[0-9]*")
        manifest = json.loads((folder / "manifest.json").read_text())
        image = grid(middle_frame(folder / manifest["files"]["preview_webp"]), 2 + 2 * manifest["num_foregrounds"])
    else:
        image = middle_frame(newest(output, saves[-1]["inputs"]["filename_prefix"], "*.webp"))
    factor = max(1, math.ceil(SIDE / image.width))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="ComfyUI's output folder")
    args = parser.parse_args()
    for name in workflows_of(DEMO):
        graph = json.loads((ROOT / api_path(name, DEMO)).read_text())
        target = ROOT / "example_workflows" / f"{TEMPLATE_TITLES[name]}.jpg"
        thumbnail(graph, args.output).save(target, quality=90)
        print(target.relative_to(ROOT))


if __name__ == "__main__":
    main()
