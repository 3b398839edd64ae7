"""The example workflows: API graphs run through the node classes (the built-in demo model's as written, the Wan2.1
ones on tiny random models at small sizes), UI graphs name real nodes with valid widget values, and the
template-browser copies match what workflows/build.py writes."""
import json
from pathlib import Path

import pytest
import torch

from layert2v_core.layers import LayerSpec
from nodes import NODE_CLASS_MAPPINGS
from workflows.build import (CORE_NODES, DEMO, PROFILES, TEMPLATE_TITLES, WAN21, WORKFLOWS, all_node_types,
                             api_path, frontend_sizes, is_widget, node_inputs, node_outputs, node_size, rendered,
                             workflows_of)

ROOT = Path(__file__).resolve().parent.parent
# What the test changes so every graph runs in seconds on a CPU; everything else runs as written. The demo graphs keep
# their sizes (the built-in model is made for them). The Wan2.1 graphs run on tiny random models at one small frame
# (the VAE dominates the time and the 5-frame path is covered by tests/test_nodes.py).
FAST = {DEMO: {"LayerT2VSampler": {"steps": 3}},
        WAN21: {"LayerT2VEmptyLatent": {"width": 16, "height": 16, "frames": 1},
                "LayerT2VSampler": {"steps": 2},
                "EmptyImage": {"width": 24, "height": 20}}}
GRAPHS = [pytest.param(profile, name, id=f"{profile.folder or 'demo'}-{name}") for profile in PROFILES
          for name in WORKFLOWS]
# Every shipped graph, the native ones included (those need ComfyUI's own Wan nodes to run: in a real server,
# tests/comfy_native_parity.py and workflows/check_in_browser.py).
ALL_GRAPHS = [pytest.param(profile, name, id=f"{profile.folder or 'demo'}-{name}") for profile in PROFILES
              for name in workflows_of(profile)]


def run_size(profile) -> tuple[int, int, int]:
    """(width, height, frames) a graph runs at under FAST."""
    empty = {**dict(zip(("width", "height", "frames"), profile.size)),
             **FAST[profile].get("LayerT2VEmptyLatent", {})}
    return empty["width"], empty["height"], empty["frames"]


class _EmptyImage:
    def run(self, width, height, batch_size, color):
        rgb = torch.tensor([(color >> 16) & 255, (color >> 8) & 255, color & 255]) / 255
        return (rgb.expand(batch_size, height, width, 3).clone(),)


class _JoinImageWithAlpha:
    def run(self, image, alpha):
        return (torch.cat([image[..., :3], (1 - alpha).unsqueeze(-1)], dim=-1),)


class _SaveAnimatedWEBP:
    saved: list = []

    def run(self, images, **widgets):
        assert images.dim() == 4 and images.shape[-1] in (3, 4)
        self.saved.append(images)
        return {"ui": {"images": []}}


# Stand-ins for the three core nodes the workflows use (same inputs and outputs as ComfyUI's own).
CORE = {"EmptyImage": _EmptyImage, "JoinImageWithAlpha": _JoinImageWithAlpha, "SaveAnimatedWEBP": _SaveAnimatedWEBP}
assert set(CORE) <= set(CORE_NODES)  # the native graphs' core nodes run only in a real server


def check_value(where: str, kind, options: dict, value) -> None:
    """A literal input value against its declared widget."""
    if isinstance(kind, list):
        assert value in kind, f"{where}: {value!r} is not one of {kind}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an INT"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} not a FLOAT"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a STRING"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a BOOLEAN"
    if kind in ("INT", "FLOAT"):
        assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"


def run_api_graph(graph: dict, fast: dict) -> dict:
    """Execute an API-format graph: links resolved in dependency order, every link and literal type-checked."""
    results: dict = {}

    def output_type(link) -> str:
        node = graph[link[0]]
        return node_outputs(node["class_type"], NODE_CLASS_MAPPINGS)[link[1]][1]

    def execute(key: str, stack=()):
        if key in results:
            return results[key]
        assert key not in stack, f"cycle through node {key}"
        node = graph[key]
        class_type = node["class_type"]
        kwargs = {}
        declared = node_inputs(class_type, NODE_CLASS_MAPPINGS)
        required = set(NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()["required"]) if class_type in \
            NODE_CLASS_MAPPINGS else {name for name, _, _ in declared}
        unknown = set(node["inputs"]) - {name for name, _, _ in declared}
        assert not unknown, f"node {key} ({class_type}) has unknown inputs {unknown}"
        for name, kind, options in declared:
            where = f"node {key} ({class_type}).{name}"
            if name not in node["inputs"]:
                assert name not in required, f"{where} is required but missing"
                continue
            value = node["inputs"][name]
            if isinstance(value, list) and not is_widget(kind):
                assert output_type(value) == kind, f"{where}: linked {output_type(value)}, expects {kind}"
                value = execute(value[0], stack + (key,))[value[1]]
            else:
                check_value(where, kind, options or {}, value)
                value = fast.get(class_type, {}).get(name, value)
            kwargs[name] = value
        if class_type in CORE:
            out = CORE[class_type]().run(**kwargs)
        else:
            cls = NODE_CLASS_MAPPINGS[class_type]
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(out, dict):  # output nodes
            out = out.get("result", ())
        results[key] = out
        return out

    for key in graph:
        execute(key)
    return results


_RUNS: dict = {}


def run_once(profile, name: str, output: Path) -> tuple[dict, dict, set]:
    """(graph, results, names of the files it wrote), computed once per graph for all tests here."""
    if (profile, name) not in _RUNS:
        before = set(output.rglob("*"))
        graph = json.loads((ROOT / api_path(name, profile)).read_text())
        results = run_api_graph(graph, FAST[profile])
        _RUNS[profile, name] = graph, results, {p.name for p in set(output.rglob("*")) - before}
    return _RUNS[profile, name]


@pytest.mark.parametrize("profile, name", GRAPHS)
def test_api_workflow_runs(profile, name, comfy_folders):
    graph, results, written = run_once(profile, name, comfy_folders[1])
    width, height, frames = run_size(profile)
    for key, node in graph.items():
        if node["class_type"] == "LayerT2VDecodeLayers":
            full, background, foreground, alpha, rgba, layers = results[key]
            assert full.shape == background.shape == foreground.shape == (frames, height, width, 3)
            assert alpha.shape == (frames, height, width) and rgba.shape == (frames, height, width, 4)
            assert torch.isfinite(rgba).all() and 0 <= float(alpha.min()) and float(alpha.max()) <= 1
        if node["class_type"] == "LayerT2VComposite":
            assert results[key][0].shape == (frames, height, width, 3)
    if any(n["class_type"] == "LayerT2VSaveLayers" for n in graph.values()):
        assert {"manifest.json", "full.mp4", "background.mp4", "fg1.mp4", "alpha1.mp4", "fg1_rgba.webm",
                "preview.webp"} <= written


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.folder or "demo")
def test_kept_foreground_workflow_keeps_the_foreground(profile, comfy_folders):
    """The second pass ends exactly on the encoded foreground and alpha (strength 0) and generates the rest anew."""
    graph, results, _ = run_once(profile, "layert2v_new_background_kept_foreground", comfy_folders[1])
    kept, generated = results["8"][0], results["11"][0]
    assert kept["layert2v"]["kept"] == ["fg1", "mask1"]
    spec = LayerSpec(1)
    kept_parts, new_parts = spec.split(kept["samples"]), spec.split(generated["samples"])
    for name in ("fg1", "mask1"):
        assert torch.allclose(new_parts[name], kept_parts[name], atol=1e-5)
    assert not torch.allclose(new_parts["bg"], spec.split(results["6"][0]["samples"])["bg"], atol=1e-3)


@pytest.mark.parametrize("profile, name", ALL_GRAPHS)
def test_ui_workflow_names_real_nodes_with_valid_widgets(profile, name, comfy_folders):
    ui = json.loads((ROOT / "workflows" / "ui" / profile.folder / f"{name}.json").read_text())
    by_id = {node["id"]: node for node in ui["nodes"]}
    for node in ui["nodes"]:
        class_type = node["type"]
        assert class_type in NODE_CLASS_MAPPINGS or class_type in CORE_NODES, f"unknown node {class_type}"
        expected = []
        for input_name, kind, options in node_inputs(class_type, NODE_CLASS_MAPPINGS):
            if is_widget(kind):
                expected.append((input_name, kind, options or {}))
                if (options or {}).get("control_after_generate"):
                    expected.append((input_name + " control", ["fixed", "increment", "decrement", "randomize"], {}))
        values = node["widgets_values"]
        assert len(values) == len(expected), f"{class_type}: {len(values)} widget values for {len(expected)} widgets"
        for (input_name, kind, options), value in zip(expected, values):
            check_value(f"{class_type}.{input_name}", kind, options, value)
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        out = by_id[source]["outputs"][slot]
        into = by_id[target]["inputs"][target_slot]
        assert out["type"] == into["type"] == kind and link_id in out["links"] and into["link"] == link_id


def test_workflow_files_match_their_definition():
    """workflows/api, workflows/ui and the template browser's example_workflows/ are what build.py writes."""
    for relative, text in rendered(NODE_CLASS_MAPPINGS).items():
        path = ROOT / relative
        assert path.is_file(), f"{relative} is missing; run python workflows/build.py"
        assert path.read_text(encoding="utf-8") == text, f"{relative} is stale; run python workflows/build.py"
    listed = {p.name for p in (ROOT / "example_workflows").glob("*.json")}
    assert listed == {f"{TEMPLATE_TITLES[name]}.json" for name in workflows_of(DEMO)}


def test_every_template_has_a_thumbnail_from_a_real_output():
    """example_workflows/<title>.jpg for each template (made by workflows/thumbnails.py from the graph's outputs)."""
    from PIL import Image
    for name in workflows_of(DEMO):
        path = ROOT / "example_workflows" / f"{TEMPLATE_TITLES[name]}.jpg"
        assert path.is_file(), f"{path.name} is missing; run python workflows/thumbnails.py"
        with Image.open(path) as image:
            assert image.format == "JPEG" and min(image.size) >= 256
            assert sum(1 for count in image.convert("L").histogram() if count) > 16  # a picture, not a blank card


def test_every_node_type_has_a_size_measured_in_the_frontend():
    """Measured for each node type, with the widgets it has now (a node that gains widgets grows taller)."""
    measured = frontend_sizes()
    assert all_node_types() <= set(measured["sizes"]), "run python workflows/measure_nodes.py"
    for class_type in all_node_types():
        widgets = sum(1 + bool((options or {}).get("control_after_generate"))
                      for _, kind, options in node_inputs(class_type, NODE_CLASS_MAPPINGS) if is_widget(kind))
        assert widgets == measured["widgets"][class_type], \
            f"{class_type} now has {widgets} widgets, {measured['widgets'][class_type]} when measured: run " \
            f"python workflows/measure_nodes.py, then python workflows/build.py"


@pytest.mark.parametrize("relative", sorted(str(p) for p in rendered(NODE_CLASS_MAPPINGS) if "ui" in p.parts
                                            or p.parts[0] == "example_workflows"))
def test_no_node_overlaps_another_as_the_frontend_draws_it(relative):
    """Each node at least the size the frontend gives it (plus room for its previews), title bar included, and no
    two nodes' boxes intersect."""
    measured = frontend_sizes()
    title = measured["title_height"]
    nodes = json.loads((ROOT / relative).read_text())["nodes"]
    boxes = []
    for node in nodes:
        least = node_size(node["type"], measured)
        assert node["size"][0] >= least[0] and node["size"][1] >= least[1], \
            f"{relative}: {node['type']} is {node['size']}, the frontend needs {least}"
        x, y = node["pos"]
        boxes.append((node["type"], x, y - title, x + node["size"][0], y + node["size"][1]))
    for i, (name_a, *a) in enumerate(boxes):
        for name_b, *b in boxes[i + 1:]:
            apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert apart, f"{relative}: {name_a} {a} overlaps {name_b} {b}"
