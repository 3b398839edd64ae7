"""Measure, in ComfyUI's real frontend, the size it gives each node the example workflows use.

    python workflows/measure_nodes.py --server http://127.0.0.1:8188 --cdp http://127.0.0.1:9222

Needs a running ComfyUI with this node pack, a Chromium started with --remote-debugging-port, and python's
playwright (which attaches to that browser over the DevTools protocol). Writes workflows/frontend/node_sizes.json,
which workflows/build.py lays the graphs out with and tests/test_workflows.py checks every shipped graph against.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from workflows.build import SIZES_FILE, all_node_types  # noqa: E402

MEASURE = """(types) => {
    const sizes = {}, widgets = {};
    for (const type of types) {
        const node = LiteGraph.createNode(type);
        if (!node) throw new Error(`the frontend does not know node type ${type}`);
        app.graph.add(node);
        sizes[type] = Array.from(node.size, Math.ceil);
        widgets[type] = (node.widgets || []).length;
        app.graph.remove(node);
    }
    return {frontend: window.__COMFYUI_FRONTEND_VERSION__ || "unknown", title_height: LiteGraph.NODE_TITLE_HEIGHT,
            sizes, widgets};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--cdp", default="http://127.0.0.1:9222", help="the browser's remote-debugging address")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.connect_over_cdp(args.cdp)
        page = (browser.contexts[0] if browser.contexts else browser.new_context()).new_page()
        page.goto(args.server)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=60_000)
        measured = page.evaluate(MEASURE, sorted(all_node_types()))
        page.close()
    # One line per node type: [width, height] and, to tell when a node's widgets change, how many it has.
    rows = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(measured["sizes"].items()))
    counts = ",\n".join(f"    {json.dumps(k)}: {v}" for k, v in sorted(measured["widgets"].items()))
    head = json.dumps({k: v for k, v in measured.items() if k not in ("sizes", "widgets")})[:-1]
    (HERE / SIZES_FILE).write_text(f'{head}, "sizes": {{\n{rows}\n}}, "widgets": {{\n{counts}\n}}}}\n',
                                   encoding="utf-8")
    print(f"{len(measured['sizes'])} node sizes from frontend {measured['frontend']} -> workflows/{SIZES_FILE}")


if __name__ == "__main__":
    main()
