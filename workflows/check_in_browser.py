"""Load every shipped graph in ComfyUI's real frontend, run it with the Run button, and check what the artist sees.

    python workflows/check_in_browser.py --comfy path/to/ComfyUI --server http://127.0.0.1:8188 \
        --cdp http://127.0.0.1:9222 --shots shots/

Needs a running ComfyUI with this node pack, a Chromium started with --remote-debugging-port and python's playwright.
For each graph: no two nodes' boxes (as the frontend computes them, title bars included) overlap, the run ends
without an error dialog, and a screenshot is taken once loaded and once finished (previews in place). The demo
graphs run as shipped. The Wan2.1 graphs run on tiny stand-ins written under the Wan2.1 file names
(tests/comfy_models.populate_native_models, plus a random Wan2.1-size VAE, which ComfyUI's Load VAE needs) at
32 x 32 x 5 frames and 4 steps; their Load CLIP (type wan) becomes Load LayerT2V Text Encoder, since the tiny umt5
is not ComfyUI's umt5-xxl.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.comfy_models import NATIVE_ADAPTER, NATIVE_DIT, NATIVE_TEXT_ENCODER, populate_native_models  # noqa: E402
from tests.comfy_native_parity import CHECK_ALPHA_VAE, CHECK_VAE, write_wan_size_vae  # noqa: E402
from workflows.build import ADAPTER, ALPHA_VAE, DIT, TEXT_ENCODER, VAE  # noqa: E402

BOXES = """() => {
    const boxes = app.graph._nodes.map(n => [n.type, Array.from(n.getBounding())]);
    const overlaps = [];
    boxes.forEach(([a, p], i) => boxes.slice(i + 1).forEach(([b, q]) => {
        const apart = p[0] + p[2] <= q[0] || q[0] + q[2] <= p[0] || p[1] + p[3] <= q[1] || q[1] + q[3] <= p[1];
        if (!apart) overlaps.push([a, b]);
    }));
    return overlaps;
}"""
FIT = """() => {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of app.graph._nodes) {
        const [x, y, w, h] = n.getBounding();
        x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
    }
    app.canvas.ds.fitToBounds([x0 - 20, y0 - 20, x1 - x0 + 40, y1 - y0 + 40], {zoom: 0.95});
    app.canvas.setDirty(true, true);
}"""
SMALL = """() => {
    const set = (node, name, value) => { const w = node.widgets.find(w => w.name === name); if (w) w.value = value; };
    for (const node of [...app.graph._nodes]) {
        if (node.type === "LayerT2VEmptyLatent" || node.type === "EmptyImage") {
            set(node, "width", 32); set(node, "height", 32); set(node, "frames", 5);
        }
        if (node.type === "LayerT2VSampler" || node.type === "KSampler") set(node, "steps", 4);
        if (node.type !== "CLIPLoader") continue;
        const loader = LiteGraph.createNode("LayerT2VTextEncoderLoader");
        loader.pos = [...node.pos];
        app.graph.add(loader);
        for (const id of [...(node.outputs[0].links || [])]) {
            const link = app.graph.links[id], target = app.graph.getNodeById(link.target_id);
            target.disconnectInput(link.target_slot);
            loader.connect(0, target, target.inputs.findIndex(i => i.name === "text_encoder"));
        }
        app.graph.remove(node);
    }
}"""


def tiny_wan21_models(models: Path) -> None:
    populate_native_models(models)
    write_wan_size_vae(models)
    for source, target in ((f"diffusion_models/{NATIVE_DIT}", f"diffusion_models/{DIT}"),
                           (f"layert2v/{NATIVE_ADAPTER}", f"layert2v/{ADAPTER}"),
                           (f"text_encoders/{NATIVE_TEXT_ENCODER}", f"text_encoders/{TEXT_ENCODER}"),
                           (f"vae/{CHECK_VAE}", f"vae/{VAE}"),
                           (f"layert2v/{CHECK_ALPHA_VAE}", f"layert2v/{ALPHA_VAE}")):
        shutil.copyfile(models / source, models / target)


def idle(server: str) -> bool:
    queue = json.load(urllib.request.urlopen(f"{server}/queue"))
    return not queue["queue_running"] and not queue["queue_pending"]


def close_dialog(page) -> None:
    """Close the open dialog as a user would (Escape) and wait until it no longer covers the canvas."""
    page.keyboard.press("Escape")
    page.locator(".p-dialog-mask").first.wait_for(state="detached", timeout=10_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfy", type=Path, required=True, help="the ComfyUI folder the server runs from")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--cdp", default="http://127.0.0.1:9222", help="the browser's remote-debugging address")
    parser.add_argument("--shots", type=Path, default=Path("shots"))
    parser.add_argument("--only", default="", help="run only the graphs whose path contains this text")
    args = parser.parse_args()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

    tiny_wan21_models(args.comfy / "models")
    args.shots.mkdir(parents=True, exist_ok=True)
    graphs = [p.relative_to(ROOT) for p in sorted((ROOT / "example_workflows").glob("*.json")) +
              sorted((ROOT / "workflows" / "ui" / "wan21").glob("*.json")) if args.only in str(p)]
    failed = False
    with sync_playwright() as playwright:
        browser = playwright.chromium.connect_over_cdp(args.cdp)
        page = (browser.contexts[0] if browser.contexts else browser.new_context()).new_page()
        page.set_viewport_size({"width": 2800, "height": 1300})
        page.goto(args.server)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=60_000)
        try:  # the template browser opens on a first visit, some moments after the app is ready
            page.locator(".p-dialog").first.wait_for(state="visible", timeout=10_000)
            close_dialog(page)
        except PlaywrightTimeout:
            pass
        for relative in graphs:
            name = relative.stem.replace(" ", "_") + ("_wan21" if "wan21" in relative.parts else "")
            page.evaluate("async (graph) => { await app.loadGraphData(graph); }",
                          json.loads((ROOT / relative).read_text(encoding="utf-8")))
            overlaps = page.evaluate(BOXES)
            if "wan21" in relative.parts:
                page.evaluate(SMALL)
            page.evaluate(FIT)
            if page.locator(".p-dialog", has_text="Templates").count():  # a slow first visit opens it late
                close_dialog(page)
            page.screenshot(path=str(args.shots / f"{name}_loaded.png"))
            start = time.perf_counter()
            page.get_by_role("button", name="Run", exact=True).first.click()
            time.sleep(1.0)
            while not idle(args.server):
                time.sleep(0.3)
            seconds = time.perf_counter() - start
            time.sleep(1.5)  # the previews arrive after the queue empties
            page.evaluate(FIT)
            page.screenshot(path=str(args.shots / f"{name}_done.png"))
            dialog = page.locator(".p-dialog").count() > 0
            failed |= bool(overlaps) or dialog
            print(f"{relative}: {seconds:.1f} s from the Run button; overlaps {overlaps or 'none'}; "
                  f"{'an error dialog' if dialog else 'no dialog'}", flush=True)
            if dialog:
                page.keyboard.press("Escape")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
