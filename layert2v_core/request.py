"""Everything `generate` is asked to do, checked before any weight loads: the samples (from `--prompts` rows or the
single-prompt flags), the sampling settings, the output folder, the kept clips. A problem stops the run with one
message naming the setting or the file and line, and how to fix it."""
from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from pathlib import Path

import torch

from .layers import MAX_FOREGROUNDS, LayerSpec
from .paths import plain_name

ROW_KEYS = {"prompt": str, "background": str, "foregrounds": list, "negative": str, "seed": int, "name": str,
            "keep": dict}
PROMPTS_FORMAT = ('one JSON object per line: {"prompt": "...", "background": "...", "foregrounds": ["...", ...], '
                  '"negative": "...", "seed": 0, "name": "folder-name", "keep": {"bg": "clip.mp4"}}; only "prompt" '
                  'is required')
SAMPLE_NUMBER = re.compile(r"^(\d{4,})-")


class RequestError(ValueError):
    """What was asked cannot be done; the message names the setting or file and the fix."""


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "sample"


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def check_row(row: object, where: str) -> dict:
    """One sample request (a --prompts row or the single-prompt flags) with the right keys and types."""
    if not isinstance(row, dict):
        raise RequestError(f"{where}: each line must be a JSON object; {PROMPTS_FORMAT}")
    unknown = sorted(set(row) - set(ROW_KEYS))
    if unknown:
        raise RequestError(f"{where}: unknown key(s) {unknown}; {PROMPTS_FORMAT}")
    for key, kind in ROW_KEYS.items():
        value = row.get(key)
        if value is None:
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise RequestError(f"{where}: seed must be an integer, got {value!r}")
        if not isinstance(value, kind):
            article = "a list of strings" if kind is list else "an object {layer: video file}" if kind is dict \
                else "a string"
            raise RequestError(f"{where}: {key} must be {article}, got {value!r}")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise RequestError(f"{where}: the prompt is empty; every sample needs a \"prompt\" describing the full video")
    foregrounds = row.get("foregrounds") or []
    if not all(isinstance(f, str) for f in foregrounds):
        raise RequestError(f"{where}: foregrounds must be a list of strings, got {foregrounds!r}")
    if len(foregrounds) > MAX_FOREGROUNDS:
        raise RequestError(f"{where}: {len(foregrounds)} foregrounds; a sample has 1..{MAX_FOREGROUNDS}")
    keep = row.get("keep") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in keep.items()):
        raise RequestError(f"{where}: keep must map layer names to video files, e.g. {{\"bg\": \"clip.mp4\"}}")
    if row.get("name") is not None:
        try:
            plain_name(row["name"], "name")
        except ValueError as error:
            raise RequestError(f"{where}: {error}") from None
    return dict(row)


def read_jobs(args) -> list[dict]:
    """Sample requests from --prompts or the single-prompt flags; every row checked before any is generated."""
    if args.prompts:
        path = Path(args.prompts)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise RequestError(f"--prompts {path}: cannot read it ({error})") from None
        jobs = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RequestError(f"{path}:{number}: not valid JSON ({err.msg}); {PROMPTS_FORMAT}") from None
            jobs.append((f"{path}:{number}", check_row(row, f"{path}:{number}")))
        if not jobs:
            raise RequestError(f"{path} holds no samples; {PROMPTS_FORMAT}")
    else:
        if args.prompt is None:
            raise RequestError("give --prompt (and --background / --foreground), or --prompts file.jsonl")
        bad = [k for k in args.keep if "=" not in k]
        if bad:
            raise RequestError(f"--keep takes LAYER=VIDEO, e.g. bg=clip.mp4; got {bad}")
        row = {"prompt": args.prompt, "background": args.background, "foregrounds": args.foreground,
               "negative": args.negative, "keep": dict(k.split("=", 1) for k in args.keep)}
        jobs = [("--prompt", check_row(row, "--prompt"))]
    checked = []
    for number, (where, job) in enumerate(jobs):
        fgs = list(job.get("foregrounds") or [])
        count = args.foregrounds or len(fgs) or 1
        if not 1 <= count <= MAX_FOREGROUNDS:
            raise RequestError(f"--foregrounds must be 1..{MAX_FOREGROUNDS}, got {count}")
        if len(fgs) > count:
            raise RequestError(f"{_at(where)}{len(fgs)} foreground prompts given but --foregrounds is {count}")
        job["foregrounds"] = fgs + [""] * (count - len(fgs))
        job.setdefault("seed", args.seed + number)
        job["where"] = where if args.prompts else ""  # a file and line to name, or the command line itself
        spec = LayerSpec(count)
        unknown = [name for name in job.get("keep") or {} if name not in spec.segments]
        if unknown:
            raise RequestError(f"{_at(job['where'])}--keep names unknown layer(s) {unknown}; a {count}-foreground "
                               f"sample has "
                               f"{list(spec.segments)}")
        for name, clip in (job.get("keep") or {}).items():
            if not Path(clip).exists():
                raise RequestError(f"{_at(job['where'])}--keep {name}={clip}: no such file")
        checked.append(job)
    return checked


def check_settings(args) -> None:
    """The sampling and output settings, before anything loads."""
    from .export import RGBA_FORMATS
    from .pipeline import check_video_size
    from .sampling import SOLVERS

    problems = []
    try:
        check_video_size(args.frames, args.height, args.width)
    except ValueError as error:
        problems.append(str(error))
    if isinstance(args.steps, bool) or not isinstance(args.steps, int) or args.steps < 1:
        problems.append(f"--steps must be an integer >= 1, got {args.steps!r}")
    for flag, value, valid, rule in (("--cfg", args.cfg, lambda v: v >= 0, ">= 0 (1 = no guidance; Wan uses 5)"),
                                     ("--shift", args.shift, lambda v: v > 0, "> 0 (Wan uses 5; 1 = no shift)"),
                                     ("--fps", args.fps, lambda v: 0 < v < 1000, "a number > 0 (Wan videos: 16)"),
                                     ("--strength", args.strength, lambda v: 0 <= v <= 1, "in [0, 1]")):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and valid(value)):
            problems.append(f"{flag} must be {rule}, got {value!r}")
    if args.solver not in SOLVERS:
        problems.append(f"solver must be one of {list(SOLVERS)}, got {args.solver!r}")
    formats = [f.strip() for f in args.rgba.split(",") if f.strip()]
    for fmt in formats:
        if fmt not in RGBA_FORMATS:
            problems.append(f"--rgba: unknown RGBA format {fmt!r}; choose from {', '.join(RGBA_FORMATS)} "
                            f"(comma-separated)")
    if problems:
        raise RequestError("; ".join(problems))
    check_writable(Path(args.out))


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise RequestError(f"--out {folder}: cannot write there ({error.strerror or error}); pick a folder you can "
                           f"write to") from None


def sample_names(jobs: list[dict], out: Path, overwrite: bool) -> None:
    """Give each job a folder name that no earlier run used, unless `overwrite`: default names are numbered on from
    the highest number in `out`, a named sample that exists becomes name-2, name-3, ..."""
    existing = {p.name for p in out.iterdir()} if out.is_dir() else set()
    start = 0 if overwrite else 1 + max((int(m.group(1)) for n in existing if (m := SAMPLE_NUMBER.match(n))),
                                        default=-1)
    taken = set() if overwrite else set(existing)
    for number, job in enumerate(jobs):
        name = job.get("name") or f"{start + number:04d}-{slug(job['prompt'])}"
        candidate, k = name, 2
        while candidate in taken:
            candidate, k = f"{name}-{k}", k + 1
        if candidate in {j.get("folder") for j in jobs[:number]}:
            raise RequestError(f"{_at(job['where'])}name {name!r} is used by an earlier row; names must differ")
        taken.add(candidate)
        job["folder"] = candidate


def load_kept_layers(keep: dict[str, str], frames: int, height: int, width: int, where: str = "",
                     notes: bool = True) -> dict[str, torch.Tensor]:
    """Read `--keep` videos into [C, T, H, W] tensors in [0, 1]; an RGBA foreground file also gives its mask."""
    from .video_io import read_video

    layers = {}
    for name, path in keep.items():
        try:
            video, _ = read_video(path)
        except (ValueError, OSError, RuntimeError) as error:
            raise RequestError(f"{_at(where)}--keep {name}={path}: cannot read it ({error})") from None
        count, clip_height, clip_width = video.shape[:3]
        if (clip_width, clip_height) != (width, height) or count < frames:
            raise RequestError(f"{_at(where)}--keep {name}={path} is {clip_width}x{clip_height} with {count} frames; "
                               f"this request is {width}x{height} with {frames} frames: resize or trim the clip, or "
                               f"set --width/--height/--frames to match")
        if count > frames and notes:
            print(f"note: --keep {name}={path} has {count} frames; the first {frames} are used", file=sys.stderr)
        clip = torch.from_numpy(video[:frames]).permute(3, 0, 1, 2).float()
        if name.startswith("mask"):
            layers[name] = clip[3:4] if clip.shape[0] == 4 else clip[:3].mean(0, keepdim=True)
            continue
        layers[name] = clip[:3]
        if name.startswith("fg") and clip.shape[0] == 4:
            layers.setdefault(f"mask{name[2:]}", clip[3:4])
    return layers


def check_kept_clips(jobs: list[dict], args) -> None:
    """Read every kept clip once (sizes, frames, layers that need their matte) before any model loads."""
    from .layered_latent import check_keep

    for job in jobs:
        if not job.get("keep"):
            continue
        layers = load_kept_layers(job["keep"], args.frames, args.height, args.width, job["where"])
        try:
            check_keep(LayerSpec(len(job["foregrounds"])), layers, args.frames, args.height, args.width)
        except ValueError as error:
            raise RequestError(f"{_at(job['where'])}{error}") from None
