"""DiT checkpoints: detect the key layout, infer the config, load without a second copy, apply LayerT2V adapters.

Layouts read: the original Wan2.1 names, ComfyUI's repack (the same names under `model.diffusion_model.`), and
diffusers' `WanTransformer3DModel` (one file or a sharded folder). Adapters: the official LayerT2V PEFT folder
(LoRA merged into the weights, `layer_adaln` restored) and our own single-file format written by the trainers.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Mapping

import torch

from .dit import ROPE_MODES, DiTConfig, WanDiT
from .layers import ROUTING_POLICIES
from .mask_modes import PROJECTIONS_FILE, load_projections, mode_of_file
from .mask_vae import FORMAT_NAME as MASK_VAE_FORMAT
from .weights import (CheckpointError, WeightSource, assign_weights, is_side_tensor, load_torch_file, open_weights,
                      read_tensor, save_weights_atomic)

log = logging.getLogger(__name__)

COMFY_PREFIX = "model.diffusion_model."
LAYER_ADALN_KEY = "layer_adaln.layer_modulation"
ADAPTER_FORMAT = "layert2v-dit-adapter"
METADATA_KEY = "layert2v"
# Small, precision-critical tensors stay float32 whatever the weight dtype (Wan computes modulation in fp32).
_FLOAT32_SUFFIXES = ("modulation",)

# diffusers -> original Wan2.1 names, applied in order to each key.
_DIFFUSERS_RENAMES = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".norm2.", ".norm3."),  # diffusers' affine cross-attention norm is Wan's norm3
)
_DIFFUSERS_FIXED = {
    "scale_shift_table": "head.modulation",
    "proj_out.weight": "head.head.weight",
    "proj_out.bias": "head.head.bias",
}


def detect_layout(keys) -> str:
    """'comfyui', 'original' or 'diffusers', from the key names alone."""
    keys = set(keys)
    if any(k.startswith(COMFY_PREFIX) for k in keys):
        return "comfyui"
    if "blocks.0.self_attn.q.weight" in keys or "patch_embedding.weight" in keys and "head.head.weight" in keys:
        return "original"
    if any(k.startswith("condition_embedder.") for k in keys) and "proj_out.weight" in keys:
        return "diffusers"
    sample = sorted(keys)[:5]
    raise CheckpointError(f"not a Wan2.1 DiT: none of the original, ComfyUI or diffusers key layouts matches "
                          f"(first keys: {sample}); pick a Wan2.1 T2V diffusion-model file")


def original_key(key: str, layout: str) -> str:
    if layout == "comfyui":
        return key[len(COMFY_PREFIX):] if key.startswith(COMFY_PREFIX) else key
    if layout == "diffusers":
        if key in _DIFFUSERS_FIXED:
            return _DIFFUSERS_FIXED[key]
        if re.fullmatch(r"blocks\.\d+\.scale_shift_table", key):
            return key.replace("scale_shift_table", "modulation")
        for a, b in _DIFFUSERS_RENAMES:
            key = key.replace(a, b)
    return key


def _metadata_config(source: WeightSource) -> dict:
    raw = source.metadata.get(METADATA_KEY)
    return json.loads(raw).get("config", {}) if raw else {}


def _diffusers_config(path: Path) -> dict:
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if not config_file.exists():
        return {}
    cfg = json.loads(config_file.read_text())
    if cfg.get("_class_name") not in (None, "WanTransformer3DModel"):
        return {}
    return {"num_heads": cfg["num_attention_heads"]} if "num_attention_heads" in cfg else {}


def infer_config(shape: Callable[[str], torch.Size], keys: set[str], known: Mapping | None = None) -> DiTConfig:
    """A DiTConfig from tensor shapes (original names); `known` overrides what shapes cannot tell (e.g. heads)."""
    patch = shape("patch_embedding.weight")
    dim, in_dim = patch[0], patch[1]
    patch_size = tuple(patch[2:])
    num_layers = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("blocks."))
    cfg = dict(
        dim=dim, in_dim=in_dim, patch_size=patch_size, num_layers=num_layers,
        ffn_dim=shape("blocks.0.ffn.0.weight")[0],
        text_dim=shape("text_embedding.0.weight")[1],
        freq_dim=shape("time_embedding.0.weight")[1],
        out_dim=shape("head.head.weight")[0] // (patch_size[0] * patch_size[1] * patch_size[2]),
        num_heads=max(dim // 128, 1),
        qk_norm="blocks.0.self_attn.norm_q.weight" in keys,
        cross_attn_norm="blocks.0.norm3.weight" in keys,
    )
    # What the shapes say wins over metadata; metadata fills in what shapes cannot tell (heads, text_len, policy).
    cfg = {**{k: v for k, v in (known or {}).items() if k in DiTConfig.__dataclass_fields__}, **cfg}
    if "num_heads" in (known or {}):
        cfg["num_heads"] = known["num_heads"]
    if LAYER_ADALN_KEY in keys:
        cfg["num_layer_categories"] = shape(LAYER_ADALN_KEY)[0]
    cfg["patch_size"] = tuple(cfg["patch_size"])
    if cfg["dim"] % cfg["num_heads"]:
        raise CheckpointError(f"cannot infer the head count: dim {dim} is not a multiple of 128; pass num_heads=")
    return DiTConfig(**cfg)


# ---- adapters ----

class Adapter:
    """LoRA pairs to merge and whole tensors to replace, keyed by original module / tensor names; `settings` holds
    the DiTConfig values the adapter was trained with (e.g. rope)."""

    def __init__(self, lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]], tensors: dict[str, torch.Tensor],
                 routing_policy: str, source: str, settings: Mapping | None = None):
        self.lora, self.tensors, self.routing_policy, self.source = lora, tensors, routing_policy, source
        self.settings = dict(settings or {})
        self.ema_shadow: list[torch.Tensor] | None = None  # an official EMA's values, applied by use_ema
        self.mask_projections: Path | None = None  # an official 'vae-project' run's mask_vae_projects.pt

    def use_ema(self, parameter_order: list[str]) -> None:
        """Replace the adapter's tensors by the EMA shadow values, which the official trainer keeps in the order of
        the trainable parameters: LoRA A then B of each module and the LayerAdaLN table, in the model's parameter
        order (ours registers modules in the official order), then the mask modules' (not used, as there)."""
        position = {name: i for i, name in enumerate(parameter_order)}
        slots = [((position.get(f"{m}.weight", len(position)), half), ("lora", m, half))
                 for m in self.lora for half in (0, 1)]
        slots += [((position.get(k, len(position)), 0), ("tensor", k, 0)) for k in self.tensors]
        slots.sort(key=lambda slot: slot[0])
        if len(self.ema_shadow) < len(slots):
            raise CheckpointError(f"{self.source}: the EMA holds {len(self.ema_shadow)} tensors but the adapter has "
                                  f"{len(slots)}; it belongs to another run")
        for (_, (kind, name, half)), value in zip(slots, self.ema_shadow):
            current = self.lora[name][half] if kind == "lora" else self.tensors[name]
            if tuple(current.shape) != tuple(value.shape):
                raise CheckpointError(f"{self.source}: EMA tensor for {name} has shape {tuple(value.shape)}, the "
                                      f"adapter's {tuple(current.shape)}; the EMA belongs to another run")
            if kind == "tensor":
                self.tensors[name] = value
            else:
                down, up, scale = self.lora[name]
                self.lora[name] = (value, up, scale) if half == 0 else (down, value, scale)
        if len(self.ema_shadow) > len(slots):
            log.info("%s: %d trailing EMA tensors are the mask modules'; not used, as in the official inference",
                     self.source, len(self.ema_shadow) - len(slots))

    def reader(self, key: str, base: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        if key in self.tensors:
            return lambda: self.tensors[key]
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module not in self.lora:
            return base
        down, up, scale = self.lora[module]

        def merged() -> torch.Tensor:
            w = base()
            return (w.float() + scale * (up.float() @ down.float())).to(w.dtype)
        return merged


def _normalise_adapter_key(key: str) -> str:
    key = key.removeprefix("base_model.model.")
    return key.replace(".modules_to_save.default.", ".").replace(".default.", ".")


OFFICIAL_RUN_CONFIG = "config.yaml"


def official_run_config(folder: str | os.PathLike) -> tuple[Path, dict] | None:
    """The official trainer's run config.yaml in an adapter folder or its parent, parsed; None if there is none."""
    import yaml

    folder = Path(folder)
    for candidate in (folder / OFFICIAL_RUN_CONFIG, folder.parent / OFFICIAL_RUN_CONFIG):
        if candidate.is_file():
            try:
                config = yaml.safe_load(candidate.read_text())
            except yaml.YAMLError as err:
                raise CheckpointError(f"{candidate} is not valid YAML ({err}); fix or remove it") from None
            if not isinstance(config, dict):
                raise CheckpointError(f"{candidate}: expected the official run config (a mapping), got "
                                      f"{type(config).__name__}")
            return candidate, config
    return None


def rope_settings(run_config: Mapping, where: str) -> dict:
    """DiTConfig rope values from an official run config's use_4d_rope and rope_dim_ratios ("8,42,40,38")."""
    use_4d = run_config.get("use_4d_rope")
    if use_4d is None:
        return {}
    if not isinstance(use_4d, bool):
        raise CheckpointError(f"{where}: use_4d_rope must be true or false, got {use_4d!r}")
    if not use_4d:
        return {"rope": "3d"}
    ratios = run_config.get("rope_dim_ratios")
    if isinstance(ratios, str):
        try:
            ratios = [int(d) for d in ratios.split(",")]
        except ValueError:
            raise CheckpointError(f"{where}: rope_dim_ratios must be four integers like \"8,42,40,38\", got "
                                  f"{ratios!r}") from None
    return {"rope": "4d", "rope_dims": tuple(ratios) if ratios else None}


EMA_FILE = Path("ema") / "ema_model.pt"
FALLBACK_WEIGHTS = "lora_weights.pt"


def official_folder(path: str | os.PathLike) -> tuple[Path, bool | None] | None:
    """(checkpoint folder, ema) when `path` is an official checkpoint folder or one of its weight files (picking
    ema/ema_model.pt means its EMA weights); None otherwise."""
    path = Path(path)
    ema = None
    if path.is_file() and path.name == EMA_FILE.name and path.parent.name == EMA_FILE.parent.name:
        path, ema = path.parent.parent, True
    elif path.is_file() and path.name in ("adapter_model.safetensors", "adapter_model.bin", FALLBACK_WEIGHTS):
        path = path.parent
    if path.is_dir() and ((path / "adapter_config.json").is_file() or (path / FALLBACK_WEIGHTS).is_file()):
        return path, ema
    return None


def _rope_settings(record: Mapping) -> dict:
    """The RoPE an adapter or merged checkpoint records; files written before 4D RoPE existed were trained with 3D."""
    settings = {"rope": record.get("rope") or "3d"}
    if record.get("rope_dims") is not None:
        settings["rope_dims"] = tuple(record["rope_dims"])
    return settings


def load_adapter(path: str | os.PathLike, ema: bool | None = None) -> Adapter:
    """Read an official LayerT2V checkpoint folder (with its run config.yaml when beside it) or our single-file
    adapter. ema: use the folder's ema/ema_model.pt (None: only when that file itself was picked)."""
    found = official_folder(path)
    if found is not None:
        return _load_official(found[0], ema if ema is not None else found[1])
    if ema:
        raise ValueError(f"{path}: EMA weights exist only in official checkpoint folders ({EMA_FILE}); ours are "
                         f"saved already averaged")
    path = Path(path)
    source = open_weights(path)
    if source.metadata.get("format") == MASK_VAE_FORMAT:
        raise CheckpointError(f"{path} is the LayerT2V alpha-matte (mask) VAE, not the DiT adapter; load it as the "
                              f"alpha VAE and pick the DiT adapter file here")
    config = _metadata_config(source)
    if config and LAYER_ADALN_KEY in source:
        # A merged LayerT2V DiT (ours): its weights are what a Wan loader reads; what a Wan model lacks is here.
        return Adapter({}, {LAYER_ADALN_KEY: source[LAYER_ADALN_KEY]}, config.get("routing_policy", "paper"),
                       f"the LayerT2V parts of merged checkpoint {path}", _rope_settings(config))
    meta = json.loads(source.metadata.get(METADATA_KEY, "{}"))
    if meta.get("format") != ADAPTER_FORMAT:
        if any(k.startswith(("blocks.", COMFY_PREFIX, "condition_embedder.")) for k in source) \
                and not any(".lora_" in k for k in source):
            raise CheckpointError(f"{path} is a full model checkpoint, not a LayerT2V adapter; load it as the model "
                                  f"and leave the adapter empty")
        if not any(".lora_A" in k or ".lora_down" in k for k in source) and LAYER_ADALN_KEY not in source:
            raise CheckpointError(f"{path} is not a LayerT2V adapter: it has no LoRA weights and no "
                                  f"{LAYER_ADALN_KEY} (first keys: {sorted(source)[:5]})")
        if not any(_normalise_adapter_key(k) == LAYER_ADALN_KEY for k in source):
            raise CheckpointError(f"{path} is a LoRA without LayerT2V's layer embeddings ({LAYER_ADALN_KEY}), e.g. "
                                  f"an ordinary Wan LoRA; the adapter slot needs the LayerT2V adapter")
    policy = meta.get("routing_policy", "paper")
    alpha = meta.get("lora_alpha")
    settings = _rope_settings(meta)

    def scale_for(module: str) -> float:
        rank = source[f"{module}.lora_A.weight"].shape[0]
        return (alpha if alpha is not None else rank) / rank
    return _build_adapter(source, scale_for, policy, f"adapter {path}", settings)


def _load_official(path: Path, ema: bool | None) -> Adapter:
    """The official PEFT folder (adapter_config.json + adapter_model.*), or its fallback lora_weights.pt."""
    config = json.loads((path / "adapter_config.json").read_text()) if (path / "adapter_config.json").is_file() else {}
    run = official_run_config(path)
    files = [f for f in ("adapter_model.safetensors", "adapter_model.bin", FALLBACK_WEIGHTS) if (path / f).exists()]
    if not files:
        raise CheckpointError(f"{path}: official checkpoint folder without adapter_model.safetensors or "
                              f"{FALLBACK_WEIGHTS}")
    source = open_weights(path / files[0])
    if config:
        alpha, rank = config.get("lora_alpha", 8), config.get("r", 8)
    elif run is not None and "lora_rank" in run[1]:  # lora_weights.pt alone: the trainer's own arguments
        alpha, rank = run[1].get("lora_alpha", run[1]["lora_rank"]), run[1]["lora_rank"]
    elif any(".lora_A" in k for k in source):
        raise CheckpointError(f"{path / files[0]} holds LoRA weights but neither adapter_config.json nor a run "
                              f"config.yaml with lora_rank / lora_alpha gives their scale; add one of them")
    else:
        alpha = rank = 1
    rslora = config.get("use_rslora", False)
    alpha_pattern, rank_pattern = config.get("alpha_pattern") or {}, config.get("rank_pattern") or {}

    def scale_for(module: str) -> float:
        a = next((v for k, v in alpha_pattern.items() if module.endswith(k)), alpha)
        r = next((v for k, v in rank_pattern.items() if module.endswith(k)), rank)
        return a / (r ** 0.5 if rslora else r)
    if run is None:
        settings = {"rope": "3d"}
        log.info("%s: no official run config.yaml in the folder or its parent; using 3D RoPE (the official "
                 "training configs' use_4d_rope: false); pass rope='4d' if the run trained with 4D RoPE", path)
    else:
        settings = {"rope": "3d", **rope_settings(run[1], str(run[0]))}
        log.info("%s: %s RoPE, from %s", path, settings["rope"].upper(), run[0])
    adapter = _build_adapter(source, scale_for, "official", f"official checkpoint {path / files[0]}", settings)
    projections = path / PROJECTIONS_FILE
    run_mode = run[1].get("mask_mode") if run is not None else None
    if projections.is_file() and mode_of_file(projections) == "vae-project" and run_mode in (None, "vae-project"):
        adapter.mask_projections = projections
        log.info("%s: 'vae-project' mask projections from %s, applied in the DiT", path, projections)
    ema_file = path / EMA_FILE
    if ema:
        if not ema_file.is_file():
            raise FileNotFoundError(f"EMA weights asked for, but {ema_file} does not exist; leave EMA off")
        state = load_torch_file(ema_file, mmap=False)
        shadow = state.get("shadow_params") if isinstance(state, dict) else None
        if not isinstance(shadow, list) or not all(isinstance(t, torch.Tensor) for t in shadow):
            raise CheckpointError(f"{ema_file} has no shadow_params list of tensors (an EMAModel state dict)")
        adapter.ema_shadow, adapter.source = shadow, f"{adapter.source} with EMA weights {ema_file}"
        log.info("%s: EMA weights from %s", path, ema_file)
    elif ema_file.is_file():
        log.info("%s: %s found but not used; ema=True (CLI --ema, or pick that file in ComfyUI) uses the EMA "
                 "weights the authors recommend", path, ema_file)
    return adapter


def _build_adapter(source: Mapping[str, torch.Tensor], scale_for: Callable[[str], float], policy: str,
                   what: str, settings: Mapping | None = None) -> Adapter:
    if policy not in ROUTING_POLICIES:
        raise CheckpointError(f"{what}: unknown routing policy {policy!r}")
    lora, tensors, downs, ups = {}, {}, {}, {}
    for raw in source:
        key = _normalise_adapter_key(raw)
        if "lora_magnitude_vector" in key:
            raise CheckpointError(f"{what}: DoRA adapters are not supported; merge them into the model first")
        m = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", key)
        if m:
            (downs if m.group(2) == "A" else ups)[m.group(1)] = source[raw]
        elif not key.endswith(".alpha"):
            tensors[key] = source[raw]
    for module, down in downs.items():
        if module not in ups:
            raise CheckpointError(f"{what}: {module} has lora_A but no lora_B; the adapter is incomplete")
        lora[module] = (down, ups[module], scale_for(module))
    if settings and settings.get("rope", "3d") not in ROPE_MODES:
        raise CheckpointError(f"{what}: unknown rope {settings['rope']!r}; expected one of {ROPE_MODES}")
    return Adapter(lora, tensors, policy, what, settings)


# ---- loading ----

def load_dit(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
             adapter: str | os.PathLike | None = None, num_heads: int | None = None, rope: str | None = None,
             rope_dims: tuple[int, int, int, int] | None = None, ema: bool | None = None) -> WanDiT:
    """Load a Wan2.1 T2V DiT (any supported layout, fp8 included) and optionally a LayerT2V adapter on top.

    rope: "3d" (Wan's) or "4d" (the official layer axis); None takes what the adapter records (an official run's
    config.yaml, our adapter's metadata), else the checkpoint's, else 3D. rope_dims: the 4D head split.
    ema: apply an official checkpoint folder's ema/ema_model.pt (None: only when that file is the adapter path).

    dtype: compute/weight dtype; None keeps the file's (fp8 files default to bfloat16). Tensors are read,
    converted and placed one at a time into a model built on the meta device, so memory peaks at one model.
    """
    path = Path(path)
    source = open_weights(path)
    raw_keys = [k for k in source if not is_side_tensor(k)]
    layout = detect_layout(raw_keys)
    names = {original_key(k, layout): k for k in raw_keys}
    known = {**_metadata_config(source), **(_diffusers_config(path) if layout == "diffusers" else {})}
    extra = load_adapter(adapter, ema=ema) if adapter is not None else None
    if extra is not None:
        known["routing_policy"] = extra.routing_policy
        known.update(extra.settings)
    if num_heads is not None:
        known["num_heads"] = num_heads
    if rope is not None:  # WanDiT checks it against ROPE_MODES
        known["rope"] = rope
    if rope_dims is not None:
        known["rope_dims"] = rope_dims
    if known.get("rope_dims") is not None:
        known["rope_dims"] = tuple(known["rope_dims"])

    def shape(key: str) -> torch.Size:
        if extra is not None and key in extra.tensors:
            return extra.tensors[key].shape
        return source[names[key]].shape
    keys = set(names) | (set(extra.tensors) if extra else set())
    try:
        cfg = infer_config(shape, keys, known)
    except KeyError as missing:
        raise CheckpointError(f"{path}: detected the {layout} layout but tensor {missing} is missing; the file is "
                              f"partial or not a Wan2.1 T2V model") from None

    if cfg.in_dim != cfg.out_dim:
        raise CheckpointError(f"{path}: a DiT with {cfg.in_dim} input channels and {cfg.out_dim} output channels, "
                              f"e.g. an image-to-video model; LayerT2V needs a text-to-video DiT, which takes as many "
                              f"channels as it gives (Wan2.1 T2V 1.3B: 16)")
    if dtype is None:
        file_dtype = source[names["blocks.0.ffn.0.weight"]].dtype
        dtype = torch.bfloat16 if not file_dtype.is_floating_point or file_dtype.itemsize == 1 else file_dtype
    with torch.device("meta"):
        model = WanDiT(cfg)
    if extra is not None and extra.ema_shadow is not None:
        extra.use_ema([name for name, _ in model.named_parameters()])
    def keep_float32(key: str) -> bool:
        return key.endswith(_FLOAT32_SUFFIXES)
    readers = {k: (lambda k=k: read_tensor(source, names[k], torch.float32 if keep_float32(k) else dtype))
               for k in names}
    if extra is not None:
        unknown = [m for m in extra.lora if f"{m}.weight" not in readers] + \
                  [k for k in extra.tensors if k not in model.state_dict()]
        if unknown:
            raise CheckpointError(f"{extra.source} does not fit this DiT: it targets {sorted(unknown)[:5]}, which "
                                  f"the model does not have; pick the adapter trained for this base model")
        _check_adapter_fits(extra, model, path)
        readers.update({k: extra.reader(k, readers.get(k)) for k in set(readers) | set(extra.tensors)})
    assign_weights(model, readers, dtype=dtype, device=device, fmt=layout, path=path, optional=[LAYER_ADALN_KEY],
                   keep_float32=keep_float32)
    if extra is not None and extra.mask_projections is not None:
        model.mask_projection = load_projections(extra.mask_projections).to(device)
    return model.eval().requires_grad_(False)


def _check_adapter_fits(adapter: Adapter, model: WanDiT, path: Path) -> None:
    """Every LoRA pair and replaced tensor matches the model's weight, before any tensor is read."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    dim = model.config.dim
    for module, (down, up, _) in sorted(adapter.lora.items()):
        out_features, in_features = expected.get(f"{module}.weight", (None, None))[:2]
        if out_features is None or (up.shape[0], down.shape[1]) == (out_features, in_features) and \
                up.shape[1] == down.shape[0]:
            continue
        width = down.shape[1] if in_features == dim else up.shape[0]  # the side of the module that is the width
        raise CheckpointError(f"{adapter.source} was made for another DiT: its LoRA on {module} maps "
                              f"{down.shape[1]} -> {up.shape[0]} features (a model of width {width}), but {path} "
                              f"is a model of width {dim} whose {module} maps {in_features} -> {out_features}; pick "
                              f"the adapter trained for this base model")
    for key, tensor in sorted(adapter.tensors.items()):
        if key in expected and tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"{adapter.source} was made for another DiT: its {key} is {tuple(tensor.shape)}, "
                                  f"but {path} (width {dim}) needs {expected[key]}; pick the adapter trained for "
                                  f"this base model")


def save_dit(model: WanDiT, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write a full checkpoint in the original layout, its config (heads, routing policy...) in the metadata."""
    tensors = {k: (v.to(dtype) if dtype is not None and not k.endswith(_FLOAT32_SUFFIXES) else v)
               for k, v in model.state_dict().items() if not k.startswith("mask_projection.")}
    save_weights_atomic(tensors, path, {METADATA_KEY: json.dumps({"config": model.config.to_dict()})})


def save_dit_adapter(model: WanDiT, lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str | os.PathLike,
                     lora_alpha: float, extra: Mapping | None = None,
                     layer_modulation: torch.Tensor | None = None) -> None:
    """Write our adapter file: LoRA pairs {module: (down [r, in], up [out, r])} + the LayerAdaLN table
    (the model's own, or `layer_modulation` such as an EMA copy)."""
    table = model.layer_adaln.layer_modulation if layer_modulation is None else layer_modulation
    tensors = {LAYER_ADALN_KEY: table.detach().float()}
    for module, (down, up) in lora.items():
        tensors[f"{module}.lora_A.weight"] = down.detach()
        tensors[f"{module}.lora_B.weight"] = up.detach()
    meta = {"format": ADAPTER_FORMAT, "version": 1, "lora_alpha": lora_alpha,
            "routing_policy": model.config.routing_policy, "rope": model.config.rope,
            "rope_dims": model.config.rope_dims,
            "num_layer_categories": table.shape[0], **(extra or {})}
    save_weights_atomic(tensors, path, {METADATA_KEY: json.dumps(meta)})
