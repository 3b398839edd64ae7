"""The data engine's command: captioned videos in, VidLayer sample folders out.

    python train/data_engine/run.py --videos list.jsonl --out VidLayerMine/
    python train/data_engine/run.py --videos list.jsonl --out VidLayerMine/ --shard 3/16        # a job array
    accelerate launch --num_processes 8 train/data_engine/run.py --videos list.jsonl --out VidLayerMine/ ...

Each kept clip becomes `OUT/<video id>_<first>-<last>/` in the layout of train/vidlayer_layout.py (the metadata
holds every stage's findings under "engine"); each finished video gets a record `OUT/.engine/<video id>.json`
(kept or rejected, and why). A rerun skips the videos that have a record, so a crash loses at most the video in
flight (a `.started` mark says which, and its leftovers are cleared); every folder and record appears whole or not
at all. `OUT/engine_summary.json` counts, over all records,
how many videos each stage kept and why it rejected the others. Processes split the list by index: --shard i/N
and the processes of `accelerate launch` (RANK, WORLD_SIZE) combine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as `python train/data_engine/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from layert2v_core.atomic import write_json
from layert2v_core.video_io import frames_to_video
from train.data_engine.backends import add_backend_arguments, build_engine
from train.data_engine.pipeline import Engine, Rules, decompose
from train.data_engine.sources import VideoRow, read_clip, read_list
from train.data_engine.stages import STAGES, Rejection
from train.vidlayer_layout import METADATA, write_sample_folder

RECORDS = ".engine"
SUMMARY = "engine_summary.json"


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/N with 0 <= i < N, e.g. 0/4; got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard takes i/N with 0 <= i < N, e.g. 0/4; got {text!r}")
    return index, count


def process_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """This process' share: --shard i/N split again among accelerate's processes."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return shard[0] * world + rank, shard[1] * world


def record_path(out: Path, video_id: str) -> Path:
    return out / RECORDS / f"{video_id}.json"


def clear_unfinished(out: Path, video_id: str) -> None:
    """What an interrupted attempt at this video left: its sample folders and their temporaries."""
    for entry in [*out.glob(f"{video_id}_*"), *out.glob(f".{video_id}_*")]:
        if not entry.is_dir():
            continue
        if entry.name.startswith("."):  # temporary or swapped-out folder
            shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            mine = json.loads((entry / METADATA).read_text())["engine"]["video_id"] == video_id
        except (OSError, ValueError, KeyError, TypeError):
            mine = False
        if mine:
            shutil.rmtree(entry, ignore_errors=True)


def sample_name(video_id: str, first: int, last: int) -> str:
    return f"{video_id}_{first:05d}-{last:05d}"


def process_video(engine: Engine, row: VideoRow, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One video, start to finish: its sample folders, then its record (returned)."""
    record: dict[str, Any] = {"id": row.id, "video": str(row.video), "caption": row.caption}
    try:
        try:
            frames, fps = read_clip(row.video, args.max_frames, args.max_side)
        except (OSError, ValueError) as error:
            raise Rejection("read", str(error)) from None
        record["frames"], record["size"] = frames.shape[0], list(frames.shape[1:3])
        clips = decompose(engine, frames, row.caption, row.hints, record)
    except Rejection as rejection:
        record.update(status="rejected", stage=rejection.stage, reason=rejection.reason)
        return record
    samples = []
    for clip in clips:
        name = sample_name(row.id, clip.first, clip.last)
        provenance = {"engine": {"video_id": row.id, "source": str(row.video), "source_caption": row.caption,
                                 "frames": [clip.first, clip.last], "fps": fps, "stages": record["stages"]}}
        write_sample_folder(out / name, frames_to_video(clip.full), frames_to_video(clip.background),
                            clip.alphas[:, None], clip.captions, lossless=args.lossless, fps=fps, extra=provenance)
        samples.append(name)
    record.update(status="kept", samples=samples)
    return record


def summarize(out: Path) -> dict[str, Any]:
    """Counts over every record in OUT (all shards): per stage, videos kept and rejection reasons."""
    records = []
    for path in sorted((out / RECORDS).glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    rejected = Counter(r.get("stage") for r in records if r.get("status") == "rejected")
    stages, remaining = {}, len(records)
    for stage in STAGES:
        reasons = Counter(r["reason"].split(":")[0][:100] for r in records
                          if r.get("status") == "rejected" and r.get("stage") == stage)
        stages[stage] = {"in": remaining, "kept": remaining - rejected[stage], "rejected": dict(reasons)}
        remaining -= rejected[stage]
    return {"videos": len(records), "kept_videos": sum(r.get("status") == "kept" for r in records),
            "samples": sum(len(r.get("samples", [])) for r in records), "stages": stages}


def run(argv: Sequence[str] | None = None) -> int:
    from train.data_engine import backends

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=backends.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", required=True, help="jsonl list, one {\"video\", \"caption\"} per line")
    parser.add_argument("--out", required=True, help="dataset folder to write sample folders into")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/N: take every N-th video from the i-th")
    parser.add_argument("--max-frames", type=int, default=241, help="frames read per video (bounds memory)")
    parser.add_argument("--max-side", type=int, default=832, help="longer side after scaling down")
    parser.add_argument("--lossless", action="store_true", help="PNG frame folders instead of mp4")
    defaults = Rules()
    parser.add_argument("--min-area", type=float, default=defaults.min_area, help="least share of the frame a "
                        "subject covers in frame 0")
    parser.add_argument("--max-area", type=float, default=defaults.max_area)
    parser.add_argument("--min-quality", type=int, default=defaults.min_quality, help="least annotator quality 0-10")
    parser.add_argument("--key-step", type=int, default=defaults.key_step, help="frames between key frames")
    parser.add_argument("--min-score", type=int, default=defaults.min_score, help="least score at both interval ends")
    parser.add_argument("--min-frames", type=int, default=defaults.min_frames, help="shortest sample kept")
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    if args.max_frames < 1 or args.max_side < 16 or args.key_step < 1 or args.min_frames < 1:
        parser.error("--max-frames, --key-step and --min-frames must be at least 1, --max-side at least 16")
    if not 0 <= args.min_area <= args.max_area <= 1:
        parser.error(f"need 0 <= --min-area <= --max-area <= 1, got {args.min_area} and {args.max_area}")
    try:
        rows = read_list(args.videos)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rules = Rules(args.min_area, args.max_area, args.min_quality, args.key_step, args.min_score, args.min_frames)
    try:
        engine = build_engine(args, rules)  # a bad backend setting stops here, before any video is read
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    out = Path(args.out)
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    index, count = process_shard(args.shard)
    mine = rows[index::count]
    todo = [row for row in mine if not record_path(out, row.id).is_file()]
    print(f"shard {index}/{count}: {len(mine)} video(s), {len(mine) - len(todo)} already done", flush=True)
    from tqdm import tqdm

    started = time.perf_counter()
    for row in tqdm(todo, desc=f"shard {index}/{count}", unit="video", disable=None):
        mark = record_path(out, row.id).with_suffix(".started")
        if mark.exists():  # an earlier attempt was interrupted: its leftovers go first
            clear_unfinished(out, row.id)
        mark.touch()
        write_json(record_path(out, row.id), process_video(engine, row, out, args))
        mark.unlink()
    summary = summarize(out)
    write_json(out / SUMMARY, summary)
    print(f"{len(todo)} video(s) in {time.perf_counter() - started:.1f} s; over all records: "
          f"{summary['kept_videos']}/{summary['videos']} video(s) kept, {summary['samples']} sample(s)")
    for stage, counts in summary["stages"].items():
        if counts["rejected"]:
            print(f"  {stage}: rejected {counts['in'] - counts['kept']} of {counts['in']}: {counts['rejected']}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
