"""Reading and writing layer videos, alpha included, with the ffmpeg binary that imageio-ffmpeg ships.

Frames are [T, H, W, C] (C = 3 RGB or 4 straight RGBA; [T, H, W] or C = 1 is grey), as numpy or torch, either
float in [0, 1] (clamped) or uint8/uint16. `read_video` returns float32 numpy frames in [0, 1] and the frame rate;
RGBA when the file carries alpha. The container decides the codec:

  .mp4   H.264 (libx264, yuv420p; odd sizes are padded to even by repeating the last row/column, with a warning)
  .webm  VP9 (libvpx-vp9, yuva420p with alpha, yuv420p without)
  .mov   ProRes 4444 (prores_ks, yuva444p10le with alpha, yuv444p10le without), fed 16-bit RGBA
  a path without a suffix: a folder of 8-bit PNG frames frame_00000.png ... (RGBA with alpha)

Colour is converted with the BT.709 matrix, limited range, and tagged so in the file. Every write goes to a temporary
file (or folder) next to the target and is renamed into place only once it is complete. ffmpeg's built-in VP9
decoder ignores the alpha plane, so webm files whose stream says alpha_mode=1 are decoded with libvpx-vp9.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import uuid
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from .atomic import replace_folder, replacing

VIDEO_FORMATS = {".mp4": "h264", ".webm": "vp9", ".mov": "prores4444"}
# Codecs a container may take instead of its default (an opaque H.264 .mov is common in editing).
ALLOWED_CODECS = {".mp4": ("h264",), ".webm": ("vp9",), ".mov": ("prores4444", "h264"), "": ("png",)}
ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "prores4444": "prores_ks", "png": None}
DEFAULT_CRF = {"h264": 18, "vp9": 20}
PNG_FRAME_NAME = "frame_{:05d}.png"
# Pixel formats whose names say they carry an alpha plane.
_ALPHA_PIX_FMT = re.compile(r"^(yuva|gbrap|rgba|bgra|argb|abgr|ya\d|pal8)")
_BT709_TAGS = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]


# ---------------------------------------------------------------- the ffmpeg binary


def ffmpeg_exe() -> str:
    """Path of imageio-ffmpeg's bundled ffmpeg binary."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RuntimeError("video files need the imageio-ffmpeg package: pip install imageio-ffmpeg") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=None)
def ffmpeg_codecs(kind: str) -> frozenset[str]:
    """Names in `ffmpeg -encoders` (kind "encoders") or `ffmpeg -decoders` ("decoders") of the bundled binary."""
    listing = subprocess.run([ffmpeg_exe(), "-hide_banner", f"-{kind}"], capture_output=True, text=True).stdout
    return frozenset(m.group(1) for m in re.finditer(r"^\s*[VAS][\w.]{5}\s+(\S+)", listing, re.MULTILINE))


def _require(kind: str, name: str, purpose: str) -> None:
    if name not in ffmpeg_codecs(kind):
        raise RuntimeError(f"the ffmpeg binary at {ffmpeg_exe()} has no {name} {kind[:-1]}, needed for {purpose}; "
                           f"upgrade imageio-ffmpeg (pip install -U imageio-ffmpeg)")


def _run_ffmpeg(args: list[str], stdin: bytes | None = None) -> bytes:
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args],
                            input=stdin, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(args[:12])} ...): {result.stderr.decode(errors='replace')}")
    return result.stdout


# ---------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    has_alpha: bool


def _strip_parentheses(text: str) -> str:
    while True:
        stripped = re.sub(r"\([^()]*\)", "", text)
        if stripped == text:
            return stripped
        text = stripped


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Codec, pixel format, size, frame rate and alpha of the first video stream, from `ffmpeg -i`."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)],
                            capture_output=True, text=True, errors="replace")
    log = result.stderr
    stream = re.search(r"Stream #\d+:\d+.*?: Video: (.*)", log)
    if stream is None:
        raise ValueError(f"{path} has no video stream ffmpeg can read: {log.strip().splitlines()[-1:]}")
    parts = [p.strip() for p in _strip_parentheses(stream.group(1)).split(",")]
    codec, pix_fmt = parts[0].split()[0], parts[1].split()[0]
    size = next((re.match(r"(\d+)x(\d+)", p) for p in parts if re.match(r"\d+x\d+", p)), None)
    if size is None:
        raise ValueError(f"cannot read the frame size of {path} from: {stream.group(1)}")
    rate = next((re.match(r"([\d.]+)(k?) (fps|tbr)", p) for p in parts if re.match(r"[\d.]+k? (fps|tbr)", p)), None)
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
    # The stream's own metadata block follows its line; VP8/VP9 keep alpha in a side stream flagged alpha_mode=1.
    after = log[stream.end():]
    next_stream = after.find("Stream #")
    metadata = after if next_stream < 0 else after[:next_stream]
    alpha_side = re.search(r"alpha_mode\s*:\s*1", metadata) is not None
    return VideoInfo(codec, pix_fmt, int(size.group(1)), int(size.group(2)), fps,
                     bool(_ALPHA_PIX_FMT.match(pix_fmt)) or alpha_side)


# ---------------------------------------------------------------- reading


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _read_png_folder(folder: Path) -> np.ndarray:
    import imageio.v3 as iio

    files = sorted((f for f in folder.iterdir() if f.suffix.lower() == ".png"), key=lambda f: _natural_key(f.name))
    if not files:
        raise ValueError(f"{folder} holds no .png frames")
    frames = []
    for f in files:
        image = np.asarray(iio.imread(f))
        scale = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
        image = image.astype(np.float32) / scale
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] in (1, 2):  # grey, grey + alpha -> RGB(A)
            image = np.concatenate([np.repeat(image[..., :1], 3, -1), image[..., 1:]], -1)
        frames.append(image)
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"PNG frames in {folder} differ in size: {sorted(sizes)}")
    if len({f.shape[-1] for f in frames}) != 1:  # mixed RGB / RGBA: make every frame RGBA
        frames = [f if f.shape[-1] == 4 else np.concatenate([f, np.ones_like(f[..., :1])], -1) for f in frames]
    return np.stack(frames)


def read_video(path: str | os.PathLike, default_fps: float = 16.0) -> tuple[np.ndarray, float]:
    """Frames float32 [T, H, W, C] in [0, 1] (C = 4, straight alpha, when the file has alpha) and frames per second.

    Reads .mp4/.webm/.mov (any codec the bundled ffmpeg decodes) and folders of PNG frames (sorted by name; a
    folder has no frame rate, so `default_fps` is returned for it).
    """
    path = Path(path)
    if path.is_dir():
        return _read_png_folder(path), float(default_fps)
    if not path.is_file():
        raise FileNotFoundError(f"no video file or PNG folder at {path}")
    info = probe_video(path)
    decoder_args: list[str] = []
    if info.has_alpha and info.codec in ("vp9", "vp8"):
        decoder = "libvpx-vp9" if info.codec == "vp9" else "libvpx"
        _require("decoders", decoder, f"the alpha channel of {path.name}")
        decoder_args = ["-c:v", decoder]
    channels = 4 if info.has_alpha else 3
    raw = _run_ffmpeg([*decoder_args, "-i", os.fspath(path), "-map", "0:v:0", "-an", "-f", "rawvideo",
                       "-pix_fmt", "rgba64le" if channels == 4 else "rgb48le", "-"])
    frame_values = info.width * info.height * channels
    data = np.frombuffer(raw, dtype="<u2")
    if data.size == 0 or data.size % frame_values:
        raise ValueError(f"decoding {path} gave {data.size} values, not whole {info.width}x{info.height} frames")
    frames = data.reshape(-1, info.height, info.width, channels).astype(np.float32) / 65535.0
    return frames, info.fps or float(default_fps)


# ---------------------------------------------------------------- writing


def _to_numpy(frames: Any) -> np.ndarray:
    if hasattr(frames, "detach"):  # torch tensor, without importing torch here
        frames = frames.detach().cpu()
        if str(frames.dtype) in ("torch.bfloat16", "torch.float16"):
            frames = frames.float()
        frames = frames.numpy()
    return np.asarray(frames)


def _normalize_frames(frames: Any) -> np.ndarray:
    """Float32 [T, H, W, C] in [0, 1] with C in (3, 4), from the accepted layouts and dtypes."""
    array = _to_numpy(frames)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [T, H, W, C] with C = 1, 3 or 4 (or [T, H, W] grey), got shape "
                         f"{array.shape}; channel-first video tensors [C, T, H, W] need .permute(1, 2, 3, 0)")
    if min(array.shape[:3]) < 1:
        raise ValueError(f"frames must hold at least one frame of at least 1x1 pixels, got shape {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_ or array.dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError("frames contain NaN or infinite values")
        array = np.clip(array, 0.0, 1.0)
    else:
        raise ValueError(f"frames must be float in [0, 1], uint8 or uint16, got dtype {array.dtype}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _quantize(frames: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.round(frames * top).astype(np.uint8 if bits == 8 else "<u2")


def _resolve_format(path: Path, codec: str | None) -> str:
    suffix = path.suffix.lower()
    if suffix not in ALLOWED_CODECS:
        raise ValueError(f"cannot write {path.name}: use .mp4 (H.264), .webm (VP9, alpha), .mov (ProRes 4444, "
                         f"alpha) or a path without a suffix for a folder of PNG frames (alpha)")
    allowed = ALLOWED_CODECS[suffix]
    if codec is None:
        return allowed[0]
    if codec not in allowed:
        raise ValueError(f"codec {codec!r} does not go in a {suffix or 'PNG folder'} output; use one of {allowed}")
    return codec


def _rate(fps: float) -> str:
    """fps as the exact fraction ffmpeg expects (29.97... -> 30000/1001)."""
    fraction = Fraction(fps).limit_denominator(1001)
    return f"{fraction.numerator}/{fraction.denominator}"


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    height, width = frames.shape[1:3]
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return frames
    warnings.warn(f"H.264 yuv420p needs even sizes: padding {width}x{height} to {width + pad_w}x{height + pad_h} "
                  f"by repeating the last column/row", stacklevel=3)
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _encode(frames: np.ndarray, fps: float, codec: str, crf: int | None, destination: Path, container: str) -> None:
    alpha = frames.shape[-1] == 4
    if codec == "h264":
        frames = _pad_to_even(frames)
        pixels, pipe_fmt = _quantize(frames, 8), "rgb24"
        encode = ["-c:v", "libx264", "-preset", "medium", "-crf", str(crf if crf is not None else DEFAULT_CRF[codec]),
                  "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p"]
        if container == "mp4":
            encode += ["-movflags", "+faststart"]
    elif codec == "vp9":
        pixels, pipe_fmt = _quantize(frames, 8), "rgba" if alpha else "rgb24"
        target = "yuva420p" if alpha else "yuv420p"
        encode = ["-c:v", "libvpx-vp9", "-crf", str(crf if crf is not None else DEFAULT_CRF[codec]), "-b:v", "0",
                  "-row-mt", "1", "-vf", f"scale=out_color_matrix=bt709:out_range=tv,format={target}"]
    else:  # prores4444: 16-bit input so its 10-bit colour and alpha keep their precision
        pixels, pipe_fmt = _quantize(frames, 16), "rgba64le" if alpha else "rgb48le"
        target = "yuva444p10le" if alpha else "yuv444p10le"
        encode = ["-c:v", "prores_ks", "-profile:v", "4444", "-vendor", "apl0",
                  "-vf", f"scale=out_color_matrix=bt709:out_range=tv,format={target}"]
    height, width = pixels.shape[1:3]
    _run_ffmpeg(["-f", "rawvideo", "-pix_fmt", pipe_fmt, "-s", f"{width}x{height}", "-r", _rate(fps), "-i", "-",
                 "-an", *encode, *_BT709_TAGS, "-f", container, "-y", os.fspath(destination)],
                stdin=np.ascontiguousarray(pixels).tobytes())


def _write_png_folder(frames: np.ndarray, folder: Path) -> None:
    import imageio.v3 as iio

    for index, frame in enumerate(_quantize(frames, 8)):
        iio.imwrite(folder / PNG_FRAME_NAME.format(index), frame)


def _check_png_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file; a PNG sequence is written to a folder")
    if target.is_dir():
        others = [f.name for f in target.iterdir() if f.suffix.lower() != ".png"]
        if others:
            raise ValueError(f"{target} holds files other than PNG frames ({others[:3]}); refusing to replace it, "
                             f"choose an empty or new folder")


def write_video(path: str | os.PathLike, frames: Any, fps: float, codec: str | None = None,
                crf: int | None = None) -> Path:
    """Write frames [T, H, W, C] to `path`, the format chosen by its suffix (see the module docstring).

    RGBA frames keep their alpha in .webm, .mov (ProRes 4444) and PNG folders; .mp4 has no alpha and refuses them.
    codec: None for the container's default, or "h264" for an opaque .mov. crf: quality of H.264/VP9 (lower is
    better, defaults 18 and 20); ProRes and PNG ignore it. The file appears only when complete. Returns the path.
    """
    target = Path(path)
    codec = _resolve_format(target, codec)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (0 < fps < 1000):
        raise ValueError(f"fps must be a positive number (Wan videos are 16), got {fps!r}")
    if crf is not None and (isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 63):
        raise ValueError(f"crf must be an integer from 0 (best) to 63, got {crf!r}")
    frames = _normalize_frames(frames)
    if codec == "h264" and frames.shape[-1] == 4:
        raise ValueError(f"H.264 ({target.name}) cannot store alpha: write .webm or .mov or a PNG folder to keep "
                         f"it, or put the layer over a background first (composite.over_background)")
    if codec == "png":
        _check_png_target(target)
    else:
        _require("encoders", ENCODERS[codec], f"writing {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp{target.suffix}")
    try:
        if codec == "png":
            temporary.mkdir()
            _write_png_folder(frames, temporary)
            replace_folder(temporary, target)
        else:
            container = "mov" if target.suffix.lower() == ".mov" else target.suffix.lower().lstrip(".")
            _encode(frames, float(fps), codec, crf, temporary, container)
            os.replace(temporary, target)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()
    return target


def write_animated_webp(video: Any, path: str | os.PathLike, fps: float, lossless: bool = False) -> None:
    """Channel-first [3, T, H, W] in [0, 1] -> an animated WEBP (what ComfyUI shows and Markdown pages embed),
    atomically."""
    from PIL import Image

    path = Path(path)
    frames = _quantize(_normalize_frames(video_to_frames(video)), 8)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    with replacing(path, suffix=".webp") as tmp:
        images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0, quality=85, lossless=lossless)


def video_to_frames(video: Any) -> Any:
    """Channel-first video [C, T, H, W] (as in composite.py) -> frames [T, H, W, C], numpy or torch alike."""
    if video.ndim != 4:
        raise ValueError(f"expected one channel-first video [C, T, H, W], got shape {tuple(video.shape)}")
    return video.permute(1, 2, 3, 0) if hasattr(video, "permute") else np.transpose(video, (1, 2, 3, 0))


def frames_to_video(frames: Any) -> Any:
    """Frames [T, H, W, C] -> channel-first video [C, T, H, W], numpy or torch alike."""
    if frames.ndim != 4:
        raise ValueError(f"expected frames [T, H, W, C], got shape {tuple(frames.shape)}")
    return frames.permute(3, 0, 1, 2) if hasattr(frames, "permute") else np.transpose(frames, (3, 0, 1, 2))
