"""Training data: layered video samples from the VidLayer layouts (train/vidlayer_layout.py), as tensors.

Each item is a dict:
    full         [3, T, H, W] in [-1, 1]
    background   [3, T, H, W] in [-1, 1]
    foregrounds  [N, 3, T, H, W] in [-1, 1], premultiplied as in the paper: full * alpha_i (so -1 where alpha is 0)
    alphas       [N, 1, T, H, W] in [0, 1] (a mask video's channel mean)
    captions     {"full": str, "background": str, "foregrounds": [str] * N}
    id           the sample's folder name (or a jsonl row's `vid`)

T frames (T = 4k + 1, what the Wan VAE takes) are picked "continuous" (a random start, then consecutive frames) or
"uniform" (evenly spaced over the clip); the start depends only on (seed, epoch, index), so a run is reproducible.
Frames are resized keeping the aspect ratio until they cover H x W, then centre-cropped. A sample that cannot be
used (unreadable, too few frames, layers of different sizes, malformed metadata) is skipped: it is counted in
`dataset.skipped` (by kind) and `dataset.skipped_samples` (id, reason), and the next usable sample with the same
number of foregrounds takes its place. With DataLoader workers these counts live in the worker processes; run
`check_dataset` (or `python train/data.py --check-data PATH`) before training for the whole picture.

Batches need one N: use `ForegroundGroupBatchSampler` as the DataLoader's batch_sampler, and `collate_layered`.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

if __package__ in (None, ""):  # run as `python train/data.py`: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from layert2v_core.layered_latent import unpremultiply
from layert2v_core.layers import MAX_FOREGROUNDS
from layert2v_core.video_io import read_video
from train.vidlayer_layout import SampleEntry, discover

SAMPLING_MODES = ("continuous", "uniform")
SIZE_MULTIPLE = 16  # VAE stride 8 times the DiT's 2x2 patches


class SampleError(ValueError):
    """One sample cannot be used; `kind` groups the reasons for counting."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def check_frame_count(frames: int) -> int:
    """T must be 4k + 1 (the Wan VAE keeps the first frame and compresses the rest by 4)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        lower = max(1, (int(frames) - 1) // 4 * 4 + 1) if isinstance(frames, (int, float)) else 1
        raise ValueError(f"frames must be 4k + 1 (1, 5, 9, 13, 17, ..., 81), got {frames!r}; use {lower} or "
                         f"{lower + 4}")
    return frames


def check_frame_size(height: int, width: int) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {value!r}")
    return height, width


def frame_indices(total: int, frames: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Which of a clip's `total` frames to take: `frames` consecutive from a random start, or evenly spaced."""
    if total < frames:
        raise SampleError("too few frames", f"has {total} frames, needs at least {frames}")
    if sampling == "continuous":
        start = int(rng.integers(0, total - frames + 1))
        return np.arange(start, start + frames)
    return np.round(np.linspace(0, total - 1, frames)).astype(np.int64)


def resize_and_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[C, T, H, W] scaled (aspect kept, bilinear) until it covers height x width, then centre-cropped."""
    source_h, source_w = video.shape[-2:]
    if (source_h, source_w) != (height, width):
        scale = max(height / source_h, width / source_w)
        size = (max(height, round(source_h * scale)), max(width, round(source_w * scale)))
        if size != (source_h, source_w):
            channels, frames = video.shape[:2]
            flat = video.reshape(channels * frames, 1, source_h, source_w)
            flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
            video = flat.reshape(channels, frames, *size)
        top, left = (video.shape[-2] - height) // 2, (video.shape[-1] - width) // 2
        video = video[..., top:top + height, left:left + width]
    return video.contiguous()


def read_layers(entry: SampleEntry) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Full, background [T, H, W, 3], alphas [T, H, W] (mask channel mean) and the optional foreground clips
    [T, H, W, 3] (none, or one per alpha) in [0, 1]; SampleError if any file is unreadable or the layers differ in
    frame count or size."""
    def read(path: Path, what: str) -> np.ndarray:
        try:
            frames, _ = read_video(path)
        except Exception as error:  # any decoder failure makes the sample unusable, not the run
            raise SampleError("unreadable", f"cannot read {what} {path.name}: {str(error).strip()[:200]}") from None
        return frames

    full = read(entry.full, "full video")[..., :3]
    background = read(entry.background, "background")[..., :3]
    alphas = [np.clip(read(m, f"mask {i}")[..., :3].mean(-1), 0.0, 1.0) for i, m in enumerate(entry.masks, 1)]
    clips = [read(c, f"foreground {i}")[..., :3] for i, c in enumerate(entry.foregrounds, 1)]
    shapes = {"full": full.shape[:3], "background": background.shape[:3],
              **{f"mask {i}": a.shape for i, a in enumerate(alphas, 1)},
              **{f"foreground {i}": c.shape[:3] for i, c in enumerate(clips, 1)}}
    if len({s[1:] for s in shapes.values()}) > 1:
        sizes = ", ".join(f"{name} {s[2]}x{s[1]}" for name, s in shapes.items())
        raise SampleError("size mismatch", f"layers differ in frame size: {sizes}")
    if len({s[0] for s in shapes.values()}) > 1:
        counts = ", ".join(f"{name} {s[0]}" for name, s in shapes.items())
        raise SampleError("frame count mismatch", f"layers differ in frame count: {counts}")
    return full, background, alphas, clips


def _to_video(frames: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Picked frames [T, H, W, C] or [T, H, W] -> channel-first [C, T, H, W]."""
    picked = torch.from_numpy(np.ascontiguousarray(frames[indices]))
    return picked[None] if picked.dim() == 3 else picked.permute(3, 0, 1, 2)


class LayeredVideoDataset(Dataset):
    """Layered samples from a folder of sample folders, one sample folder, or a jsonl file (see the module doc)."""

    def __init__(self, source: str | Path, frames: int = 17, height: int = 64, width: int = 64,
                 sampling: str = "continuous", seed: int = 0, max_foregrounds: int = MAX_FOREGROUNDS):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        self.source = Path(source)
        self.frames = check_frame_count(frames)
        self.height, self.width = check_frame_size(height, width)
        self.sampling, self.seed, self.epoch = sampling, seed, 0
        self.skipped: Counter[str] = Counter()
        self.skipped_samples: list[tuple[str, str]] = []
        entries, bad = discover(self.source)
        for sample_id, reason in bad:
            self._skip(sample_id, SampleError("bad metadata", reason))
        self.entries: list[SampleEntry] = []
        for entry in entries:
            if entry.num_foregrounds > max_foregrounds:
                self._skip(entry.id, SampleError("too many foregrounds", f"has {entry.num_foregrounds} "
                                                 f"foregrounds, this run takes at most {max_foregrounds}"))
            else:
                self.entries.append(entry)
        if not self.entries:
            raise ValueError(f"no usable sample in {self.source}: {self.skip_summary()}; check it with "
                             f"`python train/data.py --check-data {self.source}`")
        self._unusable: set[int] = set()

    def _skip(self, sample_id: str, error: SampleError) -> None:
        self.skipped[error.kind] += 1
        self.skipped_samples.append((sample_id, str(error)))

    def skip_summary(self) -> str:
        """The samples left out while indexing, counted, the first three with their reasons."""
        if not self.skipped_samples:
            return "it holds no sample folders (each with metadata.json) or jsonl rows"
        shown = "; ".join(f"{sample_id}: {reason}" for sample_id, reason in self.skipped_samples[:3])
        more = len(self.skipped_samples) - 3
        return f"{len(self.skipped_samples)} bad sample(s) ({shown}{f'; {more} more' if more > 0 else ''})"

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Different frame windows each epoch, still reproducible."""
        self.epoch = epoch

    def foreground_counts(self) -> list[int]:
        """N of every sample, in index order (for grouping batches by N)."""
        return [entry.num_foregrounds for entry in self.entries]

    def load(self, index: int) -> dict[str, Any]:
        """Sample `index` as tensors; SampleError if it cannot be used."""
        entry = self.entries[index]
        full, background, alphas, clips = read_layers(entry)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        picked = frame_indices(full.shape[0], self.frames, self.sampling, rng)
        size = (self.height, self.width)
        full_video = resize_and_crop(_to_video(full, picked), *size)
        background_video = resize_and_crop(_to_video(background, picked), *size)
        alpha_videos = torch.stack([resize_and_crop(_to_video(a, picked), *size).clamp(0, 1) for a in alphas])
        if clips:  # the dataset's own premultiplied foregrounds
            foregrounds = torch.stack([resize_and_crop(_to_video(c, picked), *size) for c in clips])
        else:
            foregrounds = full_video[None] * alpha_videos
        return {"full": full_video * 2 - 1, "background": background_video * 2 - 1,
                "foregrounds": foregrounds * 2 - 1, "alphas": alpha_videos, "captions": entry.captions,
                "id": entry.id, "foreground_clips": bool(clips)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        wanted = self.entries[index].num_foregrounds
        # the sample itself, then the following ones with the same N, then any other
        order = [(index + k) % len(self) for k in range(len(self))]
        order.sort(key=lambda i: self.entries[i].num_foregrounds != wanted)
        skipped = []  # met on the way: reported with the item, since DataLoader workers keep their own counts
        for candidate in order:
            if candidate in self._unusable:
                continue
            try:
                item = self.load(candidate)
            except SampleError as error:
                self._unusable.add(candidate)
                self._skip(self.entries[candidate].id, error)
                skipped.append({"id": self.entries[candidate].id, "kind": error.kind, "reason": str(error)})
                continue
            return {**item, "skipped": skipped} if skipped else item
        raise RuntimeError(f"every sample in {self.source} is unusable: {self.skip_summary()}; check it with "
                           f"`python train/data.py --check-data {self.source}`")


# ---------------------------------------------------------------- batching


def collate_layered(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items with the same number of foregrounds: tensors get a leading batch dim, captions become lists."""
    counts = sorted({item["foregrounds"].shape[0] for item in batch})
    if len(counts) > 1:
        raise ValueError(f"a batch mixes samples with {counts} foregrounds; give the DataLoader "
                         f"batch_sampler=ForegroundGroupBatchSampler(dataset, batch_size) so each batch has one N")
    stacked = {key: torch.stack([item[key] for item in batch]) for key in ("full", "background", "foregrounds",
                                                                           "alphas")}
    stacked["captions"] = {"full": [item["captions"]["full"] for item in batch],
                           "background": [item["captions"]["background"] for item in batch],
                           "foregrounds": [list(item["captions"]["foregrounds"]) for item in batch]}
    stacked["id"] = [item["id"] for item in batch]
    stacked["foreground_clips"] = torch.tensor([item.get("foreground_clips", False) for item in batch])
    stacked["skipped"] = [entry for item in batch for entry in item.get("skipped", ())]
    return stacked


def layer_videos(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `encode_layers` inputs of a batch: full, bg, mask_i, and fg_i (straight colour) where the samples
    brought their own foreground clips; otherwise encode_layers derives fg_i = full x alpha_i, as the paper."""
    count = batch["alphas"].shape[1]
    layers = {"full": batch["full"], "bg": batch["background"],
              **{f"mask{i + 1}": batch["alphas"][:, i] for i in range(count)}}
    if bool(torch.as_tensor(batch.get("foreground_clips", False)).any()):
        # Premultiplied clips back to straight colour (full x alpha gives full again where alpha > 0).
        layers.update({f"fg{i + 1}": unpremultiply(batch["foregrounds"][:, i], batch["alphas"][:, i])
                       for i in range(count)})
    return layers


class ForegroundGroupBatchSampler(Sampler[list[int]]):
    """Batches of indices whose samples share one number of foregrounds; shuffled per (seed, epoch) if asked."""

    def __init__(self, dataset: LayeredVideoDataset | Sequence[int], batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        counts = dataset.foreground_counts() if hasattr(dataset, "foreground_counts") else list(dataset)
        self.groups: dict[int, list[int]] = {}
        for index, count in enumerate(counts):
            self.groups.setdefault(count, []).append(index)
        self.batch_size, self.shuffle, self.seed, self.drop_last, self.epoch = batch_size, shuffle, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for count in sorted(self.groups):
            indices = list(self.groups[count])
            if self.shuffle:
                indices = [indices[i] for i in rng.permutation(len(indices))]
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


# ---------------------------------------------------------------- checking a dataset


@dataclass
class DatasetReport:
    """What `check_dataset` found. status is 0 when at least one sample is usable, 1 otherwise."""

    source: str
    total: int = 0
    usable: int = 0
    by_foregrounds: Counter = field(default_factory=Counter)
    bad: list[tuple[str, str]] = field(default_factory=list)
    frame_counts: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)

    @property
    def status(self) -> int:
        return 0 if self.usable else 1

    def format(self) -> str:
        lines = [f"dataset {self.source}: {self.usable} of {self.total} sample(s) usable"]
        if self.by_foregrounds:
            lines.append("  foregrounds: " + ", ".join(f"N={n}: {c}" for n, c in sorted(self.by_foregrounds.items())))
        if self.frame_counts:
            lines.append("  frames: " + ", ".join(f"{t}: {c}" for t, c in sorted(self.frame_counts.items())))
        if self.sizes:
            lines.append("  sizes (WxH): " + ", ".join(f"{s}: {c}" for s, c in sorted(self.sizes.items())))
        if self.bad:
            lines.append(f"  {len(self.bad)} bad sample(s):")
            lines += [f"    {sample_id}: {reason}" for sample_id, reason in self.bad]
        if not self.usable:
            lines.append("  nothing usable: fix the reasons above, or point at a folder of sample folders "
                         "(each with metadata.json) or a .jsonl file")
        return "\n".join(lines)


def check_dataset(source: str | Path, frames: int | None = None,
                  max_foregrounds: int = MAX_FOREGROUNDS) -> DatasetReport:
    """Open every sample of a dataset and report what is usable; frames (4k + 1): the clip length a run needs."""
    if frames is not None:
        check_frame_count(frames)
    report = DatasetReport(source=str(source))
    try:
        entries, bad = discover(source)
    except FileNotFoundError as error:
        report.bad.append((str(source), str(error)))
        return report
    report.total = len(entries) + len(bad)
    report.bad.extend(bad)
    for entry in entries:
        try:
            if entry.num_foregrounds > max_foregrounds:
                raise SampleError("too many foregrounds", f"has {entry.num_foregrounds} foregrounds, at most "
                                  f"{max_foregrounds} are supported")
            full = read_layers(entry)[0]
            if frames is not None and full.shape[0] < frames:
                raise SampleError("too few frames", f"has {full.shape[0]} frames, needs at least {frames}")
        except SampleError as error:
            report.bad.append((entry.id, str(error)))
            continue
        report.usable += 1
        report.by_foregrounds[entry.num_foregrounds] += 1
        report.frame_counts[full.shape[0]] += 1
        report.sizes[f"{full.shape[2]}x{full.shape[1]}"] += 1
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check a layered video dataset (VidLayer layouts).")
    parser.add_argument("--check-data", required=True, metavar="PATH",
                        help="a folder of sample folders, one sample folder, or a .jsonl file")
    parser.add_argument("--frames", type=int, default=None, help="clip length the run needs (4k + 1)")
    parser.add_argument("--max-foregrounds", type=int, default=MAX_FOREGROUNDS)
    args = parser.parse_args(argv)
    try:
        report = check_dataset(args.check_data, args.frames, args.max_foregrounds)
    except ValueError as error:
        parser.error(str(error))
    print(report.format())
    return report.status


if __name__ == "__main__":
    sys.exit(main())
