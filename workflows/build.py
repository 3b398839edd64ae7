"""The example workflows, defined once here and written in both ComfyUI formats, for two models.

    python workflows/build.py          # rewrite workflows/api, workflows/ui and example_workflows/

Each graph exists for the built-in demo model (workflows/{api,ui}/*.json: runs on a fresh ComfyUI with no
downloads, 64x64 synthetic shapes) and for Wan2.1 T2V 1.3B + a LayerT2V adapter (workflows/{api,ui}/wan21/*.json).
API format is what POST /prompt takes; UI format is what the editor loads by drag and drop. example_workflows/
(ComfyUI's template browser folder) holds copies of the built-in demo's UI files: real files rather than symlinks,
which Windows checkouts turn into plain text; tests/test_workflows.py fails if any copy differs from what this script
writes. The API and UI files are kept in sub-folders because ComfyUI lists every *.json directly inside a node
pack's workflows/ folder as a template.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from layert2v_core.model_folder import (DEMO_DIT, DEMO_MODEL_LABEL as BUILTIN, demo_model_folder,  # noqa: E402
                                       generation_settings)

# The real-weights files as ComfyUI users name them; the tests put tiny models under these names.
DIT = "wan2.1_t2v_1.3B_fp16.safetensors"
ADAPTER = "layert2v_adapter.safetensors"
VAE = "wan_2.1_vae.safetensors"
ALPHA_VAE = "layert2v_mask_vae.safetensors"
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class Profile:
    """The model a set of workflows loads, the sizes and sampling it was made for, and prompts it understands."""

    folder: str  # where its files go under workflows/api and workflows/ui ("" = directly)
    files: dict  # loader widget -> file name
    size: tuple[int, int, int]  # width, height, frames
    sampling: dict  # steps, cfg, shift
    fps: float
    prompts: dict  # workflow -> list of (full, background, [foregrounds])


# The built-in demo knows only train/synthetic.py's world: coloured shapes moving over textured backgrounds. Its size
# and sampling are those its build wrote to generation.json.
_demo = generation_settings(demo_model_folder())
if not _demo:
    raise SystemExit("models/layert2v-tiny/generation.json is missing: run python train/build_demo.py")
DEMO = Profile(
    folder="", files={"model_name": BUILTIN, "adapter_name": "none", "vae_name": BUILTIN,
                      "alpha_vae_name": BUILTIN, "text_encoder_name": BUILTIN,
                      # the native path: Load Diffusion Model lists the demo's DiT, Apply LayerT2V its LayerAdaLN
                      "unet_name": DEMO_DIT.name, "apply_adapter_name": BUILTIN},
    size=(_demo["width"], _demo["height"], _demo["frames"]),
    sampling={"steps": _demo["steps"], "cfg": _demo["cfg"], "shift": _demo["shift"]}, fps=_demo["fps"], prompts={
        "text_to_layers": [("a red star moves right over a blue striped background", "a blue striped background",
                            ["a red star"])],
        "two_foregrounds": [("a yellow circle moves up and a cyan square moves left over a green checkered "
                             "background", "a green checkered background", ["a yellow circle", "a cyan square"])],
        "background_replacement": [("a magenta diamond moves down over an orange gradient background",
                                    "an orange gradient background", ["a magenta diamond"])],
        "new_background_kept_foreground": [
            ("a white triangle moves right over a grey noise background", "a grey noise background",
             ["a white triangle"]),
            ("a white triangle moves right over a blue striped background", "a blue striped background",
             ["a white triangle"])],
    })
# Wan2.1 T2V 1.3B with a LayerT2V adapter: the files to download are listed in the README.
WAN21 = Profile(
    folder="wan21", files={"model_name": DIT, "adapter_name": ADAPTER, "vae_name": VAE, "alpha_vae_name": ALPHA_VAE,
                           "text_encoder_name": TEXT_ENCODER, "unet_name": DIT, "apply_adapter_name": ADAPTER},
    size=(672, 384, 41), sampling={"steps": 30, "cfg": 5.0, "shift": 5.0}, fps=16.0, prompts={
        "text_to_layers": [("a red fox trotting across a snowy meadow at sunrise", "a snowy meadow at sunrise",
                            ["a red fox trotting"])],
        "two_foregrounds": [("a dog and a cat playing on a wooden porch", "an empty wooden porch in the afternoon",
                             ["a brown dog", "a grey cat"])],
        "background_replacement": [("a hot air balloon drifting over green hills",
                                    "green rolling hills under a blue sky", ["a colourful hot air balloon"])],
        "new_background_kept_foreground": [
            ("a person walking a dog along a beach", "a sandy beach with waves", ["a person walking a dog"]),
            ("a person walking a dog along a city street at night", "a city street at night with neon signs",
             ["a person walking a dog"])],
    })
PROFILES = (DEMO, WAN21)

# The core ComfyUI nodes these workflows use: (input name, type, widget options) in order, and output types.
CORE_NODES = {
    "EmptyImage": {"inputs": [("width", "INT", {}), ("height", "INT", {}), ("batch_size", "INT", {}),
                              ("color", "INT", {})], "outputs": ["IMAGE"]},
    "SaveAnimatedWEBP": {"inputs": [("images", "IMAGE", None), ("filename_prefix", "STRING", {}),
                                    ("fps", "FLOAT", {}), ("lossless", "BOOLEAN", {}), ("quality", "INT", {}),
                                    ("method", ["default", "fastest", "slowest"], {})], "outputs": []},
    "JoinImageWithAlpha": {"inputs": [("image", "IMAGE", None), ("alpha", "MASK", None)], "outputs": ["IMAGE"]},
    # The native path: ComfyUI's own Wan2.1 loaders and sampler (combo lists hold the values the graphs use).
    "UNETLoader": {"inputs": [("unet_name", [DIT, DEMO_DIT.name], {}),
                              ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {})],
                   "outputs": ["MODEL"]},
    "CLIPLoader": {"inputs": [("clip_name", [TEXT_ENCODER], {}), ("type", ["wan"], {}),
                              ("device", ["default", "cpu"], {})], "outputs": ["CLIP"]},
    "VAELoader": {"inputs": [("vae_name", [VAE], {})], "outputs": ["VAE"]},
    "ModelSamplingSD3": {"inputs": [("model", "MODEL", None), ("shift", "FLOAT", {"min": 0.0, "max": 100.0})],
                         "outputs": ["MODEL"]},
    "KSampler": {"inputs": [("model", "MODEL", None),
                            ("seed", "INT", {"min": 0, "max": 2 ** 64 - 1, "control_after_generate": True}),
                            ("steps", "INT", {"min": 1, "max": 10000}), ("cfg", "FLOAT", {"min": 0.0, "max": 100.0}),
                            ("sampler_name", ["euler", "uni_pc", "dpmpp_2m"], {}),
                            ("scheduler", ["simple", "normal", "beta"], {}), ("positive", "CONDITIONING", None),
                            ("negative", "CONDITIONING", None), ("latent_image", "LATENT", None),
                            ("denoise", "FLOAT", {"min": 0.0, "max": 1.0})], "outputs": ["LATENT"]},
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# Layout: each node gets the size ComfyUI's frontend gives it (measured by workflows/measure_nodes.py), in columns by
# link depth, with room under the nodes that draw images: latent previews while sampling, saved previews after.
# Not directly in workflows/: ComfyUI lists every *.json there as a template.
SIZES_FILE = "frontend/node_sizes.json"
GAP_X, GAP_Y, MARGIN = 60, 40, 40
PREVIEW_ROOM = {  # node type -> (least width, extra height)
    "LayerT2VSampler": (0, 260), "KSampler": (0, 260),
    "LayerT2VSaveLayers": (720, 300), "SaveAnimatedWEBP": (320, 320),
}


def _loaders(p: Profile) -> dict:
    f = p.files
    return {
        "1": {"class_type": "LayerT2VModelLoader",
              "inputs": {"model_name": f["model_name"], "adapter_name": f["adapter_name"], "weight_dtype": "default",
                         "offload": "offload between runs", "rope": "auto"}},
        "2": {"class_type": "LayerT2VVAELoader",
              "inputs": {"vae_name": f["vae_name"], "alpha_vae_name": f["alpha_vae_name"], "tiling": "off",
                         "tile_size": 256, "tile_overlap": 64}},
        "3": {"class_type": "LayerT2VTextEncoderLoader",
              "inputs": {"text_encoder_name": f["text_encoder_name"], "dtype": "default"}},
    }


def _generation(p: Profile, first: int, prompts: tuple, seed: int, latent=None) -> dict:
    """Text encode, (empty latent), sampler and decode nodes numbered from `first`."""
    full, bg, fgs = prompts
    n = len(fgs)
    text, empty, sampler, decode = [str(first + i) for i in range(4)]
    graph = {
        text: {"class_type": "LayerT2VTextEncode",
               "inputs": {"num_foregrounds": n, "full_prompt": full, "background_prompt": bg,
                          "foreground_1": fgs[0], "foreground_2": fgs[1] if n > 1 else "",
                          "foreground_3": fgs[2] if n > 2 else "", "negative_prompt": "",
                          "text_encoder": ["3", 0]}},
        sampler: {"class_type": "LayerT2VSampler",
                  "inputs": {"model": ["1", 0], "conditioning": [text, 0], "latent": latent or [empty, 0],
                             "seed": seed, **p.sampling, "solver": "unipc", "routing": "checkpoint",
                             "denoise": 1.0}},
        decode: {"class_type": "LayerT2VDecodeLayers",
                 "inputs": {"vae": ["2", 0], "latent": [sampler, 0], "foreground_index": 1}},
    }
    if latent is None:
        width, height, frames = p.size
        graph[empty] = {"class_type": "LayerT2VEmptyLatent",
                        "inputs": {"width": width, "height": height, "frames": frames, "num_foregrounds": n}}
    return graph


def _save_layers(p: Profile, node_id: str, layers: list, prefix: str) -> dict:
    return {node_id: {"class_type": "LayerT2VSaveLayers",
                      "inputs": {"layers": layers, "filename_prefix": prefix, "fps": p.fps,
                                 "rgba_format": "webm (VP9 alpha)"}}}


def _save_webp(p: Profile, node_id: str, images: list, prefix: str) -> dict:
    return {node_id: {"class_type": "SaveAnimatedWEBP",
                      "inputs": {"images": images, "filename_prefix": prefix, "fps": p.fps, "lossless": False,
                                 "quality": 90, "method": "default"}}}


def text_to_layers(p: Profile) -> dict:
    graph = {**_loaders(p), **_generation(p, 4, p.prompts["text_to_layers"][0], seed=42)}
    graph.update(_save_layers(p, "8", ["7", 5], "LayerT2V/text_to_layers"))
    graph.update(_save_webp(p, "9", ["7", 4], "LayerT2V/text_to_layers_rgba"))  # the RGBA IMAGE into a core node
    return graph


def two_foregrounds(p: Profile) -> dict:
    graph = {**_loaders(p), **_generation(p, 4, p.prompts["two_foregrounds"][0], seed=7)}
    graph.update(_save_layers(p, "8", ["7", 5], "LayerT2V/two_foregrounds"))
    graph["9"] = {"class_type": "LayerT2VDecodeLayers",
                  "inputs": {"vae": ["2", 0], "latent": ["6", 0], "foreground_index": 2}}
    # MASK is 1 - alpha, so core Join Image with Alpha rebuilds the RGBA of foreground 2 directly.
    graph["10"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["9", 2], "alpha": ["9", 3]}}
    graph.update(_save_webp(p, "11", ["10", 0], "LayerT2V/two_foregrounds_fg2_rgba"))
    return graph


def background_replacement(p: Profile) -> dict:
    graph = {**_loaders(p), **_generation(p, 4, p.prompts["background_replacement"][0], seed=3)}
    # Any IMAGE batch works here: Load Image, a loaded video's frames ...; a solid colour keeps the example offline.
    width, height, _ = p.size
    graph["8"] = {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                         "color": 0x3080F0}}
    graph["9"] = {"class_type": "LayerT2VComposite", "inputs": {"layers": ["7", 5], "background": ["8", 0]}}
    graph.update(_save_webp(p, "10", ["9", 0], "LayerT2V/new_background"))
    return graph


def new_background_kept_foreground(p: Profile) -> dict:
    first, second = p.prompts["new_background_kept_foreground"]
    graph = {**_loaders(p), **_generation(p, 4, first, seed=11)}
    # Keep the first pass's foreground and its alpha (LoadImage's IMAGE + MASK of an RGBA clip plug in the same way).
    graph["8"] = {"class_type": "LayerT2VEncodeLayers",
                  "inputs": {"vae": ["2", 0], "latent": ["5", 0], "strength": 0.0, "foreground_1": ["7", 2],
                             "alpha_1": ["7", 3]}}
    graph.update(_generation(p, 9, second, seed=12, latent=["8", 0]))
    graph.update(_save_layers(p, "13", ["12", 5], "LayerT2V/kept_foreground"))
    return graph


def _native(p: Profile, prompts: tuple, seed: int, prefix: str) -> dict:
    """ComfyUI's own Wan2.1 model and sampler (Load Diffusion Model, KSampler) with Apply LayerT2V in front. Wan2.1's
    text encoder and VAE come from ComfyUI's loaders too (Load CLIP, Load VAE + the alpha VAE on top); the demo's
    tiny ones from ours, as ComfyUI builds those parts at Wan's own widths (umt5-xxl, VAE 96)."""
    full, bg, fgs = prompts
    n = len(fgs)
    width, height, frames = p.size
    own_parts = p is DEMO
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": p.files["unet_name"], "weight_dtype": "default"}},
        "2": {"class_type": "LayerT2VApply",
              "inputs": {"model": ["1", 0], "adapter_name": p.files["apply_adapter_name"], "strength": 1.0,
                         "routing": "checkpoint"}},
        "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["2", 0], "shift": p.sampling["shift"]}},
        "4": ({"class_type": "LayerT2VTextEncoderLoader", "inputs": {"text_encoder_name": p.files["text_encoder_name"],
                                                                     "dtype": "default"}} if own_parts else
              {"class_type": "CLIPLoader", "inputs": {"clip_name": p.files["text_encoder_name"], "type": "wan",
                                                      "device": "default"}}),
        "5": {"class_type": "LayerT2VTextEncode",
              "inputs": {"num_foregrounds": n, "full_prompt": full, "background_prompt": bg,
                         "foreground_1": fgs[0], "foreground_2": fgs[1] if n > 1 else "",
                         "foreground_3": fgs[2] if n > 2 else "", "negative_prompt": "",
                         "text_encoder" if own_parts else "clip": ["4", 0]}},
        "6": {"class_type": "LayerT2VEmptyLatent",
              "inputs": {"width": width, "height": height, "frames": frames, "num_foregrounds": n}},
        "7": {"class_type": "KSampler",
              "inputs": {"model": ["3", 0], "seed": seed, "steps": p.sampling["steps"], "cfg": p.sampling["cfg"],
                         "sampler_name": "uni_pc", "scheduler": "simple", "positive": ["5", 1],
                         "negative": ["5", 2], "latent_image": ["6", 0], "denoise": 1.0}},
        **({"8": {"class_type": "LayerT2VVAELoader",
                  "inputs": {"vae_name": p.files["vae_name"], "alpha_vae_name": p.files["alpha_vae_name"],
                             "tiling": "off", "tile_size": 256, "tile_overlap": 64}}} if own_parts else
           {"8": {"class_type": "VAELoader", "inputs": {"vae_name": p.files["vae_name"]}},
            "9": {"class_type": "LayerT2VAlphaVAE",
                  "inputs": {"vae": ["8", 0], "alpha_vae_name": p.files["alpha_vae_name"]}}}),
        "10": {"class_type": "LayerT2VDecodeLayers", "inputs": {"vae": ["8" if own_parts else "9", 0],
                                                               "latent": ["7", 0], "foreground_index": 1}},
        **_save_layers(p, "11", ["10", 5], f"LayerT2V/{prefix}"),
    }
    return graph


def native_text_to_layers(p: Profile) -> dict:
    graph = _native(p, p.prompts["text_to_layers"][0], seed=42, prefix="native_text_to_layers")
    graph.update(_save_webp(p, "12", ["10", 4], "LayerT2V/native_text_to_layers_rgba"))
    return graph


def native_two_foregrounds(p: Profile) -> dict:
    return _native(p, p.prompts["two_foregrounds"][0], seed=7, prefix="native_two_foregrounds")


WORKFLOWS = {
    "layert2v_text_to_layers": text_to_layers,
    "layert2v_two_foregrounds": two_foregrounds,
    "layert2v_background_replacement": background_replacement,
    "layert2v_new_background_kept_foreground": new_background_kept_foreground,
}
# The template browser shows a custom node pack's template by its file name (title, and again as description, '-'
# and '_' read as spaces) with `<name>.jpg` as its thumbnail: so the copies in example_workflows/ carry human names.
TEMPLATE_TITLES = {
    "layert2v_text_to_layers": "LayerT2V text to layers with alpha",
    "layert2v_two_foregrounds": "LayerT2V two foregrounds with alpha",
    "layert2v_background_replacement": "LayerT2V background replacement",
    "layert2v_new_background_kept_foreground": "LayerT2V new background behind a kept foreground",
    "layert2v_native_text_to_layers": "LayerT2V on the native Wan stack - text to layers with alpha",
    "layert2v_native_two_foregrounds": "LayerT2V on the native Wan stack - two foregrounds",
}
# On ComfyUI's own Wan stack (Load Diffusion Model -> Apply LayerT2V -> KSampler), for both models.
NATIVE_WORKFLOWS = {
    "layert2v_native_text_to_layers": native_text_to_layers,
    "layert2v_native_two_foregrounds": native_two_foregrounds,
}


def workflows_of(profile: Profile) -> dict:
    return {**WORKFLOWS, **NATIVE_WORKFLOWS}


# ---- UI format ----

def node_inputs(class_type: str, node_classes: dict) -> list[tuple[str, object, dict | None]]:
    """(name, type, options) of every input in declaration order; type is a string or a combo list."""
    if class_type in CORE_NODES:
        return list(CORE_NODES[class_type]["inputs"])
    spec = node_classes[class_type].INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            out.append((name, entry[0], entry[1] if len(entry) > 1 else {}))
    return out


def node_outputs(class_type: str, node_classes: dict) -> list[tuple[str, str]]:
    if class_type in CORE_NODES:
        return [(t, t) for t in CORE_NODES[class_type]["outputs"]]
    cls = node_classes[class_type]
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return list(zip(names, cls.RETURN_TYPES))


def is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def frontend_sizes() -> dict:
    """{"title_height": .., "sizes": {node type: [w, h]}} as measured in the frontend."""
    return json.loads((ROOT / "workflows" / SIZES_FILE).read_text(encoding="utf-8"))


def all_node_types() -> set[str]:
    return {node["class_type"] for profile in PROFILES for build in workflows_of(profile).values()
            for node in build(profile).values()}


def node_size(class_type: str, measured: dict) -> list[int]:
    if class_type not in measured["sizes"]:
        raise SystemExit(f"no measured size for {class_type}: run python workflows/measure_nodes.py")
    width, height = measured["sizes"][class_type]
    least_width, extra = PREVIEW_ROOM.get(class_type, (0, 0))
    return [max(width, least_width), height + extra]


def layout(api: dict, measured: dict) -> dict[str, tuple[list[int], list[int]]]:
    """{node key: (pos, size)}: a column per link depth, nodes stacked in graph order; pos is below the title."""
    depth: dict[str, int] = {}

    def depth_of(key: str) -> int:
        if key not in depth:
            sources = [v[0] for v in api[key]["inputs"].values() if isinstance(v, list) and len(v) == 2
                       and isinstance(v[0], str) and v[0] in api]
            depth[key] = 1 + max((depth_of(s) for s in sources), default=-1)
        return depth[key]

    columns: dict[int, list[str]] = {}
    for key in api:
        columns.setdefault(depth_of(key), []).append(key)
    title = measured["title_height"]
    placed, x = {}, MARGIN
    for column in sorted(columns):
        y, width = MARGIN + title, 0
        for key in columns[column]:
            size = node_size(api[key]["class_type"], measured)
            placed[key] = ([x, y], size)
            y += size[1] + title + GAP_Y
            width = max(width, size[0])
        x += width + GAP_X
    return placed


def ui_workflow(api: dict, node_classes: dict) -> dict:
    """The editor's format for an API graph: nodes with widget values in input order, links by slot."""
    ids = {key: i + 1 for i, key in enumerate(api)}
    links, nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}
    for key, node in api.items():
        for name, kind, _ in node_inputs(node["class_type"], node_classes):
            value = node["inputs"].get(name)
            if isinstance(value, list) and not is_widget(kind):
                link_id = len(links) + 1
                source, slot = ids[value[0]], value[1]
                links.append([link_id, source, slot, ids[key], None, None])
                outgoing.setdefault((source, slot), []).append(link_id)
    placed = layout(api, frontend_sizes())
    link_at = {}
    for link in links:
        link_at.setdefault(link[3], []).append(link)
    for order, (key, node) in enumerate(api.items()):
        class_type, number = node["class_type"], ids[key]
        inputs, widgets = [], []
        pending = list(link_at.get(number, []))
        for name, kind, options in node_inputs(class_type, node_classes):
            value = node["inputs"].get(name)
            if is_widget(kind):
                widgets.append(value)
                if (options or {}).get("control_after_generate"):
                    widgets.append("fixed")
                continue
            link_id = None
            if isinstance(value, list):
                link = pending.pop(0)
                link[4], link[5] = len(inputs), kind
                link_id = link[0]
            inputs.append({"name": name, "type": kind, "link": link_id})
        outputs = [{"name": name, "type": kind, "links": outgoing.get((number, slot), []), "slot_index": slot}
                   for slot, (name, kind) in enumerate(node_outputs(class_type, node_classes))]
        pos, size = placed[key]
        nodes.append({"id": number, "type": class_type, "pos": pos, "size": size, "flags": {}, "order": order,
                      "mode": 0, "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": class_type},
                      "widgets_values": widgets})
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def rendered(node_classes: dict) -> dict[Path, str]:
    """Every file this script writes, relative to the repository root, with its exact text."""
    files = {}
    for profile in PROFILES:
        for name, build in workflows_of(profile).items():
            api = build(profile)
            ui = json.dumps(ui_workflow(api, node_classes), indent=2, ensure_ascii=False) + "\n"
            files[api_path(name, profile)] = json.dumps(api, indent=2, ensure_ascii=False) + "\n"
            files[Path("workflows/ui") / profile.folder / f"{name}.json"] = ui
            if profile is DEMO:  # the template browser gets the graphs that run with no downloads
                files[Path("example_workflows") / f"{TEMPLATE_TITLES[name]}.json"] = ui
    return files


def api_path(name: str, profile: Profile) -> Path:
    return Path("workflows/api") / profile.folder / f"{name}.json"


def main() -> None:
    from nodes import NODE_CLASS_MAPPINGS

    for relative, text in rendered(NODE_CLASS_MAPPINGS).items():
        path = ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(relative)


if __name__ == "__main__":
    main()
