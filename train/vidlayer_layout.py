"""The VidLayer on-disk layouts: where a sample's videos and captions live, for writing and for reading.

Sample folder (the released VidLayer layout, read by the official single-foreground reader)::

    sample/
      metadata.json      {"captions": {"full": str, "foreground": str, "background": str},
                          "paths": {"full_video": ..., "background_video": ..., "mask_video": ...}}
      full_video.mp4     the composited video
      background.mp4     the clean background
      mask.mp4           alpha of foreground 1, grey (the reader takes the channel mean), 0 = background

Extension for several foregrounds (N = 2, 3), which leaves every single-foreground key as it was:

  - `mask_2.mp4`, `mask_3.mp4` beside `mask.mp4`: the alphas of foregrounds 2 and 3 (foreground 1 at the bottom,
    N on top, full = fg_N over ... over fg_1 over background);
  - `captions.foregrounds`: the list of all N foreground captions (`captions.foreground` stays fg 1's);
  - `paths.mask_videos`: the list of all N mask paths (`paths.mask_video` stays fg 1's).
  A folder without these lists has one foreground. The official reader sees an N > 1 folder as foreground 1 only.

Optional foreground clip (the released VidLayer has one for some samples): `foreground.mp4` (`foreground_2.mp4` ...
for more foregrounds) or `paths.foreground_video` / `paths.foreground_videos`; it is the premultiplied foreground
(full x alpha) and replaces that product in training. Without it the foreground is full x alpha.

The released VidLayer is organised by source (VIDGEN/, GOT-10K/, Youtube-VOS/, MOSEv1/, MOSEv2/): sample folders
are found at any depth below the dataset folder, and a sample's id is its path relative to it (e.g. MOSEv2/0042).

Lossless variant: the same names without `.mp4` are folders of 8-bit PNG frames (`full_video/`, `background/`,
`mask/`, `mask_2/` ...), named in `paths`. Paths in `paths` are relative to the sample folder unless absolute; a
missing entry means the default `.mp4` name in the folder.

jsonl layout: one JSON object per line with `vid` (full video), `entry.pha_video_path` (mask), `entry.bg_path`,
`overall_description`, `foreground_prompt`, `background_prompt`, optionally `entry.fg_path` (the foreground clip);
paths relative to the jsonl's folder unless absolute. Several foregrounds: `entry.pha_video_paths` and `foreground_prompts` lists, as above. Missing captions
get the official reader's defaults.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from layert2v_core.atomic import replace_folder, write_json, write_text
from layert2v_core.video_io import video_to_frames, write_video

METADATA = "metadata.json"
FULL_NAME, BACKGROUND_NAME, MASK_NAME, FOREGROUND_NAME = "full_video", "background", "mask", "foreground"
VIDEO_SUFFIX = ".mp4"
# The official reader's fallbacks for captions a jsonl row leaves out.
DEFAULT_CAPTIONS = {"full": "A video.", "foreground": "An object.", "background": "A background."}


@dataclass(frozen=True)
class SampleEntry:
    """Where one sample's layer videos are and what its captions say; nothing is read from the videos yet."""

    id: str
    full: Path
    background: Path
    masks: tuple[Path, ...]
    caption_full: str
    caption_background: str
    caption_foregrounds: tuple[str, ...]
    foregrounds: tuple[Path, ...] = ()  # optional premultiplied foreground clips, one per mask, or none

    @property
    def num_foregrounds(self) -> int:
        return len(self.masks)

    @property
    def captions(self) -> dict[str, Any]:
        return {"full": self.caption_full, "background": self.caption_background,
                "foregrounds": list(self.caption_foregrounds)}


def mask_name(number: int) -> str:
    """File stem of foreground `number`'s alpha: mask, mask_2, mask_3."""
    return MASK_NAME if number == 1 else f"{MASK_NAME}_{number}"


def foreground_name(number: int) -> str:
    """File stem of foreground `number`'s optional clip: foreground, foreground_2, foreground_3."""
    return FOREGROUND_NAME if number == 1 else f"{FOREGROUND_NAME}_{number}"


# ---------------------------------------------------------------- writing


def caption_metadata(captions: dict[str, Any]) -> dict[str, Any]:
    """metadata.json's "captions": VidLayer's full / foreground / background, and every foreground's caption."""
    return {"full": captions["full"], "foreground": captions["foregrounds"][0], "background": captions["background"],
            "foregrounds": list(captions["foregrounds"])}


def write_sample_folder(folder: str | os.PathLike, full: torch.Tensor, background: torch.Tensor,
                        alphas: torch.Tensor, captions: dict[str, Any], lossless: bool = False,
                        fps: float = 16.0, extra: dict[str, Any] | None = None) -> Path:
    """Write one sample folder: full, background [3, T, H, W] and alphas [N, 1, T, H, W], all in [0, 1].

    captions: {"full": str, "background": str, "foregrounds": [str] * N}. lossless: PNG folders instead of mp4.
    extra: more metadata keys (e.g. how the sample was made). The folder appears only when complete; an existing
    sample folder (one holding metadata.json) at the same place is replaced.
    """
    target = Path(folder)
    if alphas.dim() != 5 or alphas.shape[1] != 1:
        raise ValueError(f"alphas must be [N, 1, T, H, W], got {tuple(alphas.shape)}")
    count = alphas.shape[0]
    if len(captions.get("foregrounds", [])) != count:
        raise ValueError(f"got {count} alpha(s) but {len(captions.get('foregrounds', []))} foreground caption(s); "
                         f"give one caption per foreground")
    if target.exists() and not (target / METADATA).is_file():
        raise ValueError(f"{target} exists and is not a sample folder (no {METADATA}); choose a new folder")
    suffix = "" if lossless else VIDEO_SUFFIX
    names = {"full": FULL_NAME + suffix, "background": BACKGROUND_NAME + suffix,
             "masks": [mask_name(i) + suffix for i in range(1, count + 1)]}
    metadata = {
        "captions": caption_metadata(captions),
        "paths": {"full_video": names["full"], "background_video": names["background"],
                  "mask_video": names["masks"][0], "mask_videos": names["masks"]},
        "num_foregrounds": count,
        **(extra or {}),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    temporary.mkdir()
    try:
        write_video(temporary / names["full"], video_to_frames(full), fps)
        write_video(temporary / names["background"], video_to_frames(background), fps)
        for name, alpha in zip(names["masks"], alphas):
            write_video(temporary / name, video_to_frames(alpha), fps)
        write_json(temporary / METADATA, metadata)
        replace_folder(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def write_jsonl(path: str | os.PathLike, folders: Iterable[str | os.PathLike]) -> Path:
    """A jsonl index of written sample folders, with paths relative to the jsonl's folder."""
    target = Path(path)

    def relative(file: Path) -> str:
        return Path(os.path.relpath(file, target.parent)).as_posix()

    rows = []
    for folder in folders:
        entry = read_sample_folder(folder)
        rows.append({
            "vid": relative(entry.full),
            "entry": {"pha_video_path": relative(entry.masks[0]), "bg_path": relative(entry.background),
                      "pha_video_paths": [relative(m) for m in entry.masks]},
            "overall_description": entry.caption_full,
            "foreground_prompt": entry.caption_foregrounds[0],
            "foreground_prompts": list(entry.caption_foregrounds),
            "background_prompt": entry.caption_background,
        })
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, "".join(json.dumps(row) + "\n" for row in rows))
    return target


# ---------------------------------------------------------------- reading


def _resolve(base: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty path string, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _caption(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _foreground_list(single: Any, several: Any, what: str) -> list:
    """The N-foreground list when given, else the single-foreground value as a list of one."""
    if several is None:
        return [single]
    if not isinstance(several, list) or not several:
        raise ValueError(f"{what} must be a non-empty list, got {several!r}")
    return several


def read_sample_folder(folder: str | os.PathLike) -> SampleEntry:
    """Parse a sample folder's metadata.json into a SampleEntry; ValueError naming the problem if it is malformed."""
    folder = Path(folder)
    try:
        metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no {METADATA}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{METADATA} is not readable JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{METADATA} must hold a JSON object")
    captions = metadata.get("captions", {})
    paths = metadata.get("paths", {})
    if not isinstance(captions, dict) or not isinstance(paths, dict):
        raise ValueError(f"'captions' and 'paths' in {METADATA} must be JSON objects")
    full = _resolve(folder, paths.get("full_video", FULL_NAME + VIDEO_SUFFIX), "paths.full_video")
    background = _resolve(folder, paths.get("background_video", BACKGROUND_NAME + VIDEO_SUFFIX),
                          "paths.background_video")
    mask_values = _foreground_list(paths.get("mask_video", MASK_NAME + VIDEO_SUFFIX), paths.get("mask_videos"),
                                   "paths.mask_videos")
    masks = tuple(_resolve(folder, m, "a mask path") for m in mask_values)
    fg_captions = _foreground_list(captions.get("foreground"), captions.get("foregrounds"), "captions.foregrounds")
    if len(fg_captions) != len(masks):
        raise ValueError(f"{len(masks)} mask(s) but {len(fg_captions)} foreground caption(s) in {METADATA}")
    if paths.get("foreground_video") is not None or paths.get("foreground_videos") is not None:
        clip_values = _foreground_list(paths.get("foreground_video"), paths.get("foreground_videos"),
                                       "paths.foreground_videos")
        clips = tuple(_resolve(folder, c, "a foreground path") for c in clip_values)
    else:
        clips = tuple(folder / (foreground_name(i) + VIDEO_SUFFIX) for i in range(1, len(masks) + 1))
        clips = clips if all(c.exists() for c in clips) else ()
    if clips and len(clips) != len(masks):
        raise ValueError(f"{len(masks)} mask(s) but {len(clips)} foreground clip(s) in {METADATA}")
    return SampleEntry(
        id=folder.name, full=full, background=background, masks=masks, foregrounds=clips,
        caption_full=_caption(captions.get("full"), "captions.full"),
        caption_background=_caption(captions.get("background"), "captions.background"),
        caption_foregrounds=tuple(_caption(c, "a foreground caption") for c in fg_captions))


def parse_jsonl_row(row: Any, base: Path) -> SampleEntry:
    """One jsonl row -> SampleEntry (paths relative to `base`); ValueError naming the problem if malformed."""
    if not isinstance(row, dict):
        raise ValueError("the row is not a JSON object")
    entry = row.get("entry")
    if not isinstance(entry, dict):
        raise ValueError("the row has no 'entry' object (with pha_video_path and bg_path)")
    full = _resolve(base, row.get("vid"), "vid")
    mask_values = _foreground_list(entry.get("pha_video_path"), entry.get("pha_video_paths"),
                                   "entry.pha_video_paths")
    masks = tuple(_resolve(base, m, "entry.pha_video_path") for m in mask_values)
    fg_captions = _foreground_list(row.get("foreground_prompt", DEFAULT_CAPTIONS["foreground"]),
                                   row.get("foreground_prompts"), "foreground_prompts")
    if len(fg_captions) != len(masks):
        raise ValueError(f"{len(masks)} mask(s) but {len(fg_captions)} foreground prompt(s)")
    clips = ()
    if entry.get("fg_path") is not None or entry.get("fg_paths") is not None:
        clips = tuple(_resolve(base, c, "entry.fg_path")
                      for c in _foreground_list(entry.get("fg_path"), entry.get("fg_paths"), "entry.fg_paths"))
        if len(clips) != len(masks):
            raise ValueError(f"{len(masks)} mask(s) but {len(clips)} foreground clip(s)")
    return SampleEntry(
        id=str(row.get("vid")), full=full, background=_resolve(base, entry.get("bg_path"), "entry.bg_path"),
        masks=masks, foregrounds=clips,
        caption_full=_caption(row.get("overall_description", DEFAULT_CAPTIONS["full"]), "overall_description"),
        caption_background=_caption(row.get("background_prompt", DEFAULT_CAPTIONS["background"]),
                                    "background_prompt"),
        caption_foregrounds=tuple(_caption(c, "foreground_prompt") for c in fg_captions))


def discover(source: str | os.PathLike) -> tuple[list[SampleEntry], list[tuple[str, str]]]:
    """All samples of a dataset: (entries, bad) with bad = [(sample id, reason)] for what could not be parsed.

    source: a .jsonl file, a folder of sample folders (at any depth, e.g. one folder per VidLayer source), or one
    sample folder (holding metadata.json).
    """
    source = Path(source)
    entries: list[SampleEntry] = []
    bad: list[tuple[str, str]] = []
    if source.is_file() and source.suffix.lower() == ".jsonl":
        with open(source, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    entries.append(parse_jsonl_row(json.loads(line), source.parent))
                except (json.JSONDecodeError, ValueError) as error:
                    bad.append((f"{source.name} line {number}", str(error)))
        return entries, bad
    if not source.is_dir():
        raise FileNotFoundError(f"no dataset at {source}: give a folder of sample folders (each with {METADATA}) "
                                f"or a .jsonl file")
    if (source / METADATA).is_file():
        folders = [source]
    else:
        folders = list(_sample_folders(source))
    for folder in folders:
        sample_id = folder.name if folder == source else folder.relative_to(source).as_posix()
        try:
            entries.append(dataclasses.replace(read_sample_folder(folder), id=sample_id))
        except ValueError as error:
            bad.append((sample_id, str(error)))
    return entries, bad


_SAMPLE_FILE_SUFFIXES = (VIDEO_SUFFIX, ".json", ".png", ".jpg")  # a folder holding these is a sample, not a source


def _sample_folders(root: Path) -> Iterable[Path]:
    """Folders below `root` that hold metadata.json (not looked into further), or that hold nothing to descend
    into (reported as bad samples); hidden names are skipped."""
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / METADATA).is_file():
            yield child
            continue
        inner = [p for p in child.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if inner and not any(p.is_file() and p.suffix.lower() in _SAMPLE_FILE_SUFFIXES for p in child.iterdir()):
            yield from _sample_folders(child)
        else:
            yield child


def entries_by_foregrounds(entries: Sequence[SampleEntry]) -> dict[int, list[int]]:
    """Indices of entries grouped by their number of foregrounds."""
    groups: dict[int, list[int]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault(entry.num_foregrounds, []).append(index)
    return dict(sorted(groups.items()))
