"""Reading and writing weight files without holding two copies of a model.

Every loader in the project goes through `open_weights` (safetensors file, sharded directory, or a torch pickle
read with weights_only=True) and `assign_weights` (tensors are converted one by one and placed into a module built on
the meta device). ComfyUI's fp8 files, plain and scaled, are dequantised here.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import replacing

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
# Scaled-fp8 side tensors: per-weight scales (two spellings across ComfyUI versions) and input-side extras.
_WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_IGNORED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_IGNORED_KEYS = ("scaled_fp8",)  # a marker, at the top level or under a model prefix


class CheckpointError(ValueError):
    """A weight file that is not what the loader expects; the message says what was found and what to do."""


class WeightSource(Mapping[str, torch.Tensor]):
    """Lazy read-only mapping key -> tensor over one or more files; a tensor is read only when asked for."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._where: dict[str, Callable[[], torch.Tensor]] = {}
        files = _weight_files(self.path)
        for f in files:
            if f.suffix == ".safetensors":
                try:
                    with safe_open(str(f), framework="pt") as h:
                        self.metadata.update(h.metadata() or {})
                        for k in h.keys():
                            self._where[k] = _safetensors_reader(f, k)
                except SafetensorError as error:
                    raise CheckpointError(f"{f}: not a readable safetensors file ({error}; {f.stat().st_size:,} "
                                          f"bytes): it is empty or truncated, e.g. an interrupted download; download "
                                          f"it again") from None
            else:
                state = _torch_load(f)
                for k, v in state.items():
                    if isinstance(v, torch.Tensor):
                        self._where[k] = (lambda v=v: v)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def open_weights(path: str | os.PathLike) -> WeightSource:
    if not Path(path).exists():
        raise FileNotFoundError(f"weight file or folder not found: {path}")
    return WeightSource(path)


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        shards = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
    if not files:
        raise CheckpointError(f"no .safetensors, .pth or .pt weights in folder {path}")
    return files


def _safetensors_reader(file: Path, key: str) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        with safe_open(str(file), framework="pt") as h:
            return h.get_tensor(key)
    return read


def load_torch_file(file: str | os.PathLike, mmap: bool = True):
    """torch.load with weights_only=True (pickled code is refused, never run); a refused or damaged file gives one
    message naming it. mmap keeps the file's tensors on disk until they are used."""
    try:
        try:
            return torch.load(str(file), map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(str(file), map_location="cpu", weights_only=True)  # files of the legacy format
    except Exception as error:  # the weights-only unpickler meets junk with whatever error the junk leads to
        refused = isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error)
        if refused:
            # torch's text goes on to suggest ways of allowing the object; only what was refused is worth showing
            found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\.|\n|$)", str(error))
            what = f" ({found.group(1).strip()})" if found else ""
            raise CheckpointError(f"{file}: refused: besides tensors it holds Python objects{what}, and loading "
                                  f"those could run code. Use a .safetensors file of this model, or one saved as "
                                  f"plain tensors by a source you trust") from None
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint ({first}): it is damaged or truncated, "
                              f"e.g. an interrupted download; download it again") from None


def _torch_load(file: Path) -> dict:
    state = load_torch_file(file)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} does not hold a state dict (found {type(state).__name__})")
    return state


def read_tensor(source: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read one tensor, dequantising fp8 with its scale when the file carries one, then cast to `dtype`."""
    t = source[key]
    if t.dtype in FP8_DTYPES:
        base = key[: -len(".weight")] if key.endswith(".weight") else key
        scale = next((source[base + s] for s in _WEIGHT_SCALE_SUFFIXES if base + s in source), None)
        t = t.to(torch.float32)
        if scale is not None:
            scale = scale.to(torch.float32)
            if scale.numel() > 1:  # per-output-channel scales
                scale = scale.reshape(-1, *([1] * (t.dim() - 1)))
            t = t * scale
        if dtype is None:
            dtype = torch.bfloat16
    return t if dtype is None or not t.is_floating_point() else t.to(dtype)


def is_side_tensor(key: str) -> bool:
    """Keys that only describe another tensor (fp8 scales, markers) and map to no parameter."""
    return key.rpartition(".")[2] in _IGNORED_KEYS or key.endswith(_WEIGHT_SCALE_SUFFIXES + _IGNORED_SUFFIXES)


def describe_mismatch(fmt: str, path, missing: Iterable[str], unexpected: Iterable[str], limit: int = 5) -> str:
    missing, unexpected = sorted(missing), sorted(unexpected)
    parts = [f"{path}: detected the {fmt} layout but the weights do not fit the model"]
    if missing:
        parts.append(f"{len(missing)} missing key(s), first: {missing[:limit]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first: {unexpected[:limit]}")
    parts.append("the file is partial or belongs to another model")
    return "; ".join(parts)


def assign_weights(module: torch.nn.Module, tensors: Mapping[str, Callable[[], torch.Tensor]], *,
                   dtype: torch.dtype | None, device, fmt: str, path, optional: Iterable[str] = (),
                   keep_float32: Callable[[str], bool] | None = None) -> None:
    """Fill a meta-device module from `tensors` (module key -> reader), one tensor at a time.

    Parameters named in `optional` and absent from the file keep the module's initial value (materialised here).
    Floating tensors become `dtype`, except those `keep_float32(name)` marks, which become float32.
    Raises CheckpointError naming the first missing / unexpected keys before any tensor is read.
    """
    own = dict(module.state_dict(keep_vars=True))
    optional = set(optional)
    missing = [k for k in own if k not in tensors and k not in optional]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise CheckpointError(describe_mismatch(fmt, path, missing, unexpected))
    for name, current in own.items():
        if name in tensors:
            value = tensors[name]()
            if tuple(value.shape) != tuple(current.shape):
                raise CheckpointError(f"{path}: {fmt} layout, tensor {name} has shape {tuple(value.shape)} but the "
                                      f"model inferred from the file expects {tuple(current.shape)}")
            wanted = torch.float32 if keep_float32 is not None and keep_float32(name) else dtype
            target = wanted if (wanted is not None and value.is_floating_point()) else value.dtype
            value = value.to(device=device, dtype=target)
        else:
            value = torch.zeros(current.shape, dtype=dtype or torch.float32, device=device)
        _set_tensor(module, name, value)


def _set_tensor(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=owner._parameters[attr].requires_grad)
    else:
        owner._buffers[attr] = value


def save_weights_atomic(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                        metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata={k: str(v) for k, v in (metadata or {}).items()})


def file_hash(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """Short sha256 of a file (or of a folder's weight files), for manifests and caches."""
    h = hashlib.sha256()
    p = Path(path)
    for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())):
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]
