"""Finding and loading the five parts of a LayerT2V model from one folder or from explicit paths.

A model folder holds, under any of the names users already have (first match wins):
  DiT           dit.safetensors | wan2.1_t2v_1.3B_fp16.safetensors | diffusion_pytorch_model.safetensors | transformer/
                | diffusion_models/ (ComfyUI's folder name, holding one .safetensors file)
  adapter       adapter.safetensors | layert2v_adapter.safetensors | adapter/ (official PEFT folder)   (optional)
  RGB VAE       vae.safetensors | wan_2.1_vae.safetensors | Wan2.1_VAE.pth | vae/
  alpha VAE     mask_vae.safetensors | mask_vae_lora.pt | mask_decoder.pt (+ mask_encoder.pt) | mask_vae.pt
                (+ mask_vae_projects.pt)  (optional; also looked for beside an official adapter folder; none: the
                plain Wan VAE, 'vae' mask mode)
  text encoder  text_encoder.safetensors | umt5_xxl_fp16.safetensors | umt5_xxl_fp8_e4m3fn_scaled.safetensors |
                models_t5_umt5-xxl-enc-bf16.pth | text_encoder/
  settings      generation.json: the sampling settings the model was made for (optional; see GENERATION_KEYS)

The repository ships one such folder, the embedded demo model (`demo_model_folder()`), the default wherever a user
has not chosen a model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

CANDIDATES = {
    "dit": ("dit.safetensors", "wan2.1_t2v_1.3B_fp16.safetensors", "wan2.1_t2v_1.3B_bf16.safetensors",
            "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json", "transformer",
            "diffusion_models"),
    "adapter": ("adapter.safetensors", "layert2v_adapter.safetensors", "adapter"),
    "vae": ("vae.safetensors", "wan_2.1_vae.safetensors", "Wan2.1_VAE.pth", "vae"),
    "mask_vae": ("mask_vae.safetensors", "mask_vae_lora.pt", "mask_decoder.pt", "mask_vae.pt"),
    "text_encoder": ("text_encoder.safetensors", "umt5_xxl_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                     "models_t5_umt5-xxl-enc-bf16.pth", "text_encoder"),
}
# Without an alpha VAE file the official 'vae' mask mode applies (the plain Wan VAE decodes mattes).
OPTIONAL = ("adapter", "mask_vae")
DEMO_MODEL_NAME = "layert2v-tiny"
DEMO_MODEL_LABEL = f"{DEMO_MODEL_NAME} (built-in demo)"  # how model pickers (the ComfyUI loaders) list it
# The demo's DiT sits in a folder of its own, so ComfyUI's Load Diffusion Model can list that folder and show it alone.
DEMO_DIT = Path("diffusion_models") / f"{DEMO_MODEL_NAME}.safetensors"
GENERATION_FILE = "generation.json"
# What generation.json may set, with the type each value must have.
GENERATION_KEYS = {"frames": int, "height": int, "width": int, "steps": int, "cfg": float, "shift": float,
                   "solver": str, "fps": float}


def demo_model_folder() -> Path | None:
    """The embedded demo model shipped in the repository (models/layert2v-tiny), if present."""
    folder = Path(__file__).resolve().parent.parent / "models" / DEMO_MODEL_NAME
    return folder if (folder / DEMO_DIT).is_file() else None


def generation_settings(folder: str | os.PathLike | None) -> dict:
    """The sampling settings a model folder was made for (its generation.json), or {} when it has none."""
    if folder is None or not (Path(folder) / GENERATION_FILE).is_file():
        return {}
    path = Path(folder) / GENERATION_FILE
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}); fix or delete it") from None
    unknown = sorted(set(settings) - set(GENERATION_KEYS)) if isinstance(settings, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"{path}: expected an object with keys among {sorted(GENERATION_KEYS)}, got {unknown}")
    for key, kind in GENERATION_KEYS.items():
        value = settings.get(key)
        if value is not None and not (isinstance(value, kind) or (kind is float and isinstance(value, int))):
            article = "an" if kind is int else "a"
            raise ValueError(f"{path}: {key} must be {article} {kind.__name__}, got {value!r}")
    return settings


def _only_weights_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder} should hold the model's one DiT .safetensors file, found "
                                f"{[f.name for f in files] or 'none'}; keep one there or name the DiT explicitly")
    return files[0]


@dataclass
class ModelPaths:
    dit: Path | None = None
    vae: Path | None = None
    mask_vae: Path | None = None
    text_encoder: Path | None = None
    adapter: Path | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {f.name: (str(getattr(self, f.name)) if getattr(self, f.name) else None) for f in fields(self)}


def find_components(folder: str | os.PathLike | None = None, required: tuple[str, ...] | None = None,
                    **explicit: str | os.PathLike | None) -> ModelPaths:
    """Resolve each part from explicit paths first, then from `folder`; one message lists what is missing.

    `required` names the parts the caller needs (default: all but the adapter)."""
    base = Path(folder) if folder is not None else None
    if base is not None and not base.is_dir():
        raise FileNotFoundError(f"model folder not found: {base}")
    paths = ModelPaths()
    for part, names in CANDIDATES.items():
        given = explicit.get(part)
        if given is not None:
            if not Path(given).exists():
                raise FileNotFoundError(f"{part.replace('_', ' ')} not found: {given}")
            setattr(paths, part, Path(given))
            continue
        if base is not None:
            hit = next((base / n for n in names if (base / n).exists()), None)
            if hit is not None and hit.name.endswith(".index.json"):
                hit = hit.parent
            elif hit is not None and hit.name == "diffusion_models" and hit.is_dir():
                hit = _only_weights_file(hit)
            setattr(paths, part, hit)
    if paths.mask_vae is None and explicit.get("mask_vae") is None and paths.adapter is not None \
            and paths.adapter.is_dir():  # an official checkpoint folder keeps its mask files beside the adapter
        paths.mask_vae = next((paths.adapter / n for n in CANDIDATES["mask_vae"] if (paths.adapter / n).exists()),
                              None)
    required = tuple(p for p in CANDIDATES if p not in OPTIONAL) if required is None else required
    missing = [p for p in required if getattr(paths, p) is None]
    if missing:
        where = f"in {base}" if base is not None else "(no model folder given)"
        hints = "; ".join(f"{m}: one of {list(CANDIDATES[m])}" for m in missing)
        raise FileNotFoundError(f"missing model part(s) {missing} {where}. Expected {hints}, or pass the paths "
                                f"explicitly")
    return paths


def load_pipeline(paths: ModelPaths, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  offload: bool = True, vae_tile=None, rope: str | None = None, mask_mode: str | None = None,
                  ema: bool | None = None):
    """Load every part onto the offload device (CPU) and return a LayerT2VPipeline computing on `device`.

    rope: the DiT's RoPE ("3d" / "4d"); None takes what the adapter records. mask_mode: see mask_modes.py;
    None takes the alpha file's, else the official run config's, else 'vae'. ema: an official checkpoint's EMA
    weights (see load_dit)."""
    from .checkpoints import load_dit
    from .mask_modes import choose_mask_mode, load_mask_mode
    from .pipeline import LayerT2VPipeline
    from .text import load_text_encoder
    from .vae import frozen_vae_dtype, load_vae

    home = "cpu" if offload else device
    if dtype is None and torch.device(device).type == "cpu":
        dtype = torch.float32  # half-precision files compute in fp32 on CPU, where fp16 kernels are slow or missing
    matte = choose_mask_mode(paths.mask_vae, paths.adapter, mask_mode)  # a missing mask file stops us before loading
    dit = load_dit(paths.dit, dtype=dtype, device=home, adapter=paths.adapter, rope=rope, ema=ema)
    if matte[0] != "vae-project":  # the chosen mode decides, also over an official run's projections file
        dit.mask_projection = None
    vae = load_vae(paths.vae, dtype=frozen_vae_dtype(device), device=home)
    mask_vae = load_mask_mode(vae, *matte, adapter=paths.adapter)  # the VAE's weights are shared, never copied
    text_encoder = load_text_encoder(paths.text_encoder, dtype=dtype, device=home)
    return LayerT2VPipeline(dit, vae, mask_vae, text_encoder, device, offload=offload, vae_tile=vae_tile,
                            names=(str(paths.dit), str(paths.vae), str(paths.text_encoder)))
