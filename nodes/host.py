"""Everything the nodes need from ComfyUI, in one place, with plain-Python stand-ins when ComfyUI is absent.

Inside ComfyUI: model folders via `folder_paths`, devices and memory via `comfy.model_management`, progress and
cancel via `comfy.utils.ProgressBar`, latent previews via `latent_preview`. Without it (tests, scripts): a models
folder and an output folder set with `use_folders`, the CPU, and no progress bar.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from layert2v_core.paths import inside

# Our own model kind: LayerT2V adapters and alpha-VAE files; `loras` is searched as well for the DiT adapter.
ADAPTER_KIND = "layert2v"
MODEL_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".sft")

try:  # ComfyUI present
    import folder_paths  # type: ignore
except ImportError:
    folder_paths = None

_fallback = {"models": None, "output": None}


def use_folders(models: str | os.PathLike, output: str | os.PathLike) -> None:
    """Outside ComfyUI: where `<models>/<kind>/` files are listed from and where outputs go."""
    _fallback["models"], _fallback["output"] = Path(models), Path(output)


def register_model_folder(demo_dit_folder: Path | None = None) -> None:
    """Our model kind, and the demo's DiT folder as one more `diffusion_models` folder: ComfyUI's own Load Diffusion
    Model then lists the built-in demo (its folder holds that one file)."""
    if folder_paths is None:
        return
    if ADAPTER_KIND not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(ADAPTER_KIND, os.path.join(folder_paths.models_dir, ADAPTER_KIND))
    if demo_dit_folder is not None and "diffusion_models" in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("diffusion_models", str(demo_dit_folder))


def list_models(kind: str) -> list[str]:
    """File names (relative to the kind's folders) that the loaders offer."""
    if folder_paths is not None:
        try:
            return sorted(folder_paths.get_filename_list(kind))
        except KeyError:
            return []
    root = _fallback["models"]
    if root is None or not (root / kind).is_dir():
        return []
    base = root / kind
    return sorted(str(p.relative_to(base)).replace(os.sep, "/") for p in base.rglob("*")
                  if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)


def model_path(kind: str, name: str) -> Path:
    """Full path of a listed model file; a clear error when it is not there."""
    if folder_paths is not None:
        found = folder_paths.get_full_path(kind, name)
    else:
        root = _fallback["models"]
        try:  # as ComfyUI's folder_paths does: a listed name never leaves its kind's folder
            candidate = inside(root / kind, name, "model name") if root is not None else None
        except ValueError:
            candidate = None
        found = str(candidate) if candidate is not None and candidate.is_file() else None
    if not found:
        raise FileNotFoundError(f"{name!r} is not in the {kind!r} model folder (models/{kind}/); put the file "
                                f"there and refresh, or pick another one")
    return Path(found)


def output_directory() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    if _fallback["output"] is None:
        raise RuntimeError("no output folder: call nodes.host.use_folders(models, output) outside ComfyUI")
    return _fallback["output"]


# ---- devices and memory ----

def compute_device() -> torch.device:
    if folder_paths is None:
        return torch.device("cpu")
    import comfy.model_management as mm
    return mm.get_torch_device()


def default_dtype() -> torch.dtype | None:
    """Weights' compute dtype when the user keeps 'default': the file's on a GPU, fp32 on a CPU (no fast fp16)."""
    return torch.float32 if compute_device().type == "cpu" else None


def offload_device() -> torch.device:
    if folder_paths is None:
        return torch.device("cpu")
    import comfy.model_management as mm
    return mm.unet_offload_device()


def make_room(device: torch.device, module: torch.nn.Module | None = None) -> None:
    """Ask ComfyUI to unload its own models until `module` fits on `device` (no-op on CPU / outside ComfyUI)."""
    if folder_paths is None or device.type == "cpu":
        return
    import comfy.model_management as mm
    needed = 0 if module is None else sum(p.numel() * p.element_size() for p in module.parameters())
    mm.free_memory(needed + (512 << 20), device)


def release_cache() -> None:
    if folder_paths is None:
        return
    import comfy.model_management as mm
    mm.soft_empty_cache()


def check_interrupted() -> None:
    if folder_paths is None:
        return
    import comfy.model_management as mm
    mm.throw_exception_if_processing_interrupted()


# ---- progress and previews ----

def progress(total: int) -> Callable[[int, torch.Tensor | None], None]:
    """update(step, preview_latent): ComfyUI's progress bar (which also cancels), previewing a latent if given."""
    if folder_paths is None:
        return lambda step, latent=None: None
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)
    previewer = _previewer()

    def update(step: int, latent: torch.Tensor | None = None) -> None:
        image = None
        if previewer is not None and latent is not None:
            image = previewer.decode_latent_to_preview_image("JPEG", latent.float())
        bar.update_absolute(step, total, image)

    return update


def _previewer():
    try:
        import comfy.latent_formats
        import latent_preview  # type: ignore
    except ImportError:
        return None
    # Our latents are Wan2.1's normalised latents, the space ComfyUI's Wan preview factors are made for.
    return latent_preview.get_previewer(compute_device(), comfy.latent_formats.Wan21())


# ---- ComfyUI sampling objects ----

def flow_model_sampling(shift: float):
    """ComfyUI's flow-matching model sampling (discrete flow, CONST noise scaling) for a given shift."""
    import comfy.model_sampling as ms

    class LayerT2VFlowSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    sampling = LayerT2VFlowSampling()
    sampling.set_parameters(shift=float(shift), multiplier=1000)
    return sampling


def scheduler_names() -> list[str]:
    if folder_paths is None:
        return []
    import comfy.samplers
    return list(comfy.samplers.SCHEDULER_NAMES)


def scheduler_sigmas(name: str, steps: int, shift: float) -> torch.Tensor:
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(flow_model_sampling(shift), name, steps)
