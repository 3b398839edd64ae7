"""The layered video dataset: round trips through both layouts, frame sampling, skipping bad samples, the check."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from train.data import (ForegroundGroupBatchSampler, LayeredVideoDataset, check_dataset, collate_layered, main,
                        resize_and_crop)
from train.synthetic import generate_sample, write_sample
from train.vidlayer_layout import write_jsonl, write_sample_folder

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(frames=9, height=32, width=32)
# H.264 4:2:0 at 32x32 blurs colour across the shapes' sharp edges; mean errors measured 0.027 (full), 0.0015 (alpha)
MP4_MEAN_TOLERANCE = {"full": 0.05, "background": 0.03, "alphas": 0.01}


def _write(root, lossless, counts=(1, 2, 3)):
    samples = {}
    for number, count in enumerate(counts):
        sample = generate_sample(100 + number, num_foregrounds=count, **SMALL)
        samples[f"clip_{number}"] = sample
        write_sample(sample, root / f"clip_{number}", lossless=lossless)
    return samples


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    root = tmp_path_factory.mktemp("lossless")
    return root, _write(root, lossless=True)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp4")
    samples = _write(root, lossless=False, counts=(1, 2))
    write_jsonl(root / "index.jsonl", sorted(root.glob("clip_*")))
    return root, samples


def _as_unit(video):
    return (video + 1) / 2


def test_lossless_round_trip_is_exact_to_8_bits(lossless):
    root, samples = lossless
    dataset = LayeredVideoDataset(root, sampling="uniform", **SMALL)
    assert len(dataset) == 3 and dataset.foreground_counts() == [1, 2, 3]
    for index in range(3):
        item = dataset[index]
        sample = samples[item["id"]]
        count = sample.num_foregrounds
        assert item["full"].shape == (3, 9, 32, 32) and item["alphas"].shape == (count, 1, 9, 32, 32)
        assert item["foregrounds"].shape == (count, 3, 9, 32, 32)
        assert (_as_unit(item["full"]) - sample.full).abs().max() <= 0.5 / 255 + 1e-6
        assert (_as_unit(item["background"]) - sample.background).abs().max() <= 0.5 / 255 + 1e-6
        assert (item["alphas"] - sample.alphas).abs().max() <= 0.5 / 255 + 1e-6
        # foregrounds are premultiplied by the read alpha, the paper's full * alpha
        expected = _as_unit(item["full"])[None] * item["alphas"]
        assert torch.allclose(_as_unit(item["foregrounds"]), expected, atol=1e-6)
        assert item["captions"] == sample.captions
    assert sum(dataset.skipped.values()) == 0


def test_mp4_round_trip_within_tolerance(mp4):
    root, samples = mp4
    dataset = LayeredVideoDataset(root, sampling="uniform", **SMALL)
    for index in range(len(dataset)):
        item = dataset[index]
        sample = samples[item["id"]]
        errors = {"full": (_as_unit(item["full"]) - sample.full).abs().mean(),
                  "background": (_as_unit(item["background"]) - sample.background).abs().mean(),
                  "alphas": (item["alphas"] - sample.alphas).abs().mean()}
        for key, error in errors.items():
            assert error < MP4_MEAN_TOLERANCE[key], (item["id"], key, error.item())


def test_jsonl_layout_reads_the_same_samples(mp4):
    root, _ = mp4
    from_folders = LayeredVideoDataset(root, sampling="uniform", **SMALL)
    from_jsonl = LayeredVideoDataset(root / "index.jsonl", sampling="uniform", **SMALL)
    assert len(from_jsonl) == len(from_folders) == 2
    for index in range(2):
        a, b = from_folders[index], from_jsonl[index]
        assert b["id"] == f"clip_{index}/full_video.mp4"
        assert a["captions"] == b["captions"]
        for key in ("full", "background", "foregrounds", "alphas"):
            assert torch.equal(a[key], b[key])


def test_official_single_foreground_jsonl_row_with_absolute_paths(lossless, tmp_path):
    root, samples = lossless
    clip = root / "clip_0"
    row = {"vid": str(clip / "full_video"),
           "entry": {"pha_video_path": str(clip / "mask"), "bg_path": str(clip / "background")},
           "overall_description": "everything", "foreground_prompt": "a thing"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n\n")
    item = LayeredVideoDataset(tmp_path / "rows.jsonl", sampling="uniform", **SMALL)[0]
    assert item["captions"] == {"full": "everything", "background": "A background.", "foregrounds": ["a thing"]}
    assert (item["alphas"][0] - samples["clip_0"].alphas[0]).abs().max() <= 0.5 / 255 + 1e-6


def _numbered_clip(folder, frames):
    """A sample whose frame k is the grey level k / 32, so the picked frame numbers can be read back."""
    levels = torch.arange(frames, dtype=torch.float32) / 32
    full = levels.view(1, frames, 1, 1).expand(3, frames, 16, 16)
    alphas = torch.ones(1, 1, frames, 16, 16)
    captions = {"full": "numbers", "background": "numbers", "foregrounds": ["numbers"]}
    return write_sample_folder(folder, full, full, alphas, captions, lossless=True)


def _picked(item):
    return [round(v * 32) for v in _as_unit(item["full"])[0, :, 0, 0].tolist()]


def test_frame_sampling_modes(tmp_path):
    _numbered_clip(tmp_path / "clip", 13)
    uniform = LayeredVideoDataset(tmp_path, frames=5, height=16, width=16, sampling="uniform")
    assert _picked(uniform[0]) == [0, 3, 6, 9, 12]
    continuous = LayeredVideoDataset(tmp_path, frames=5, height=16, width=16, sampling="continuous", seed=3)
    starts = []
    for epoch in range(8):
        continuous.set_epoch(epoch)
        picked = _picked(continuous[0])
        assert picked == list(range(picked[0], picked[0] + 5)) and 0 <= picked[0] <= 8
        starts.append(picked[0])
    assert len(set(starts)) > 1, "the window should move between epochs"
    again = LayeredVideoDataset(tmp_path, frames=5, height=16, width=16, sampling="continuous", seed=3)
    again.set_epoch(7)
    assert _picked(again[0])[0] == starts[7], "same seed and epoch, same window"


def test_frame_count_and_size_must_suit_the_vae(tmp_path):
    _numbered_clip(tmp_path / "clip", 5)
    with pytest.raises(ValueError, match=r"4k \+ 1.*use 13 or 17"):
        LayeredVideoDataset(tmp_path, frames=16, height=16, width=16)
    with pytest.raises(ValueError, match="multiple of 16"):
        LayeredVideoDataset(tmp_path, frames=5, height=24, width=16)
    with pytest.raises(ValueError, match="sampling"):
        LayeredVideoDataset(tmp_path, frames=5, height=16, width=16, sampling="random")


def test_resize_keeps_the_aspect_and_crops_the_centre():
    columns = torch.arange(48, dtype=torch.float32).view(1, 1, 1, 48).expand(3, 2, 32, 48)
    cropped = resize_and_crop(columns, 32, 32)
    assert cropped.shape == (3, 2, 32, 32) and torch.equal(cropped[0, 0, 0], torch.arange(8, 40).float())
    upscaled = resize_and_crop(torch.rand(1, 2, 16, 8), 32, 32)
    assert upscaled.shape == (1, 2, 32, 32)
    halved = resize_and_crop(torch.full((3, 1, 64, 64), 0.25), 32, 32)
    assert torch.allclose(halved, torch.full_like(halved, 0.25))


def _damaged_copy(lossless, tmp_path):
    root, _ = lossless
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "clip_1" / "mask_2")
    (copy / "clip_1" / "mask_2").mkdir()  # an empty frame folder: unreadable
    (copy / "broken").mkdir()
    (copy / "broken" / "metadata.json").write_text("{not json")
    _numbered_clip(copy / "short", 5)
    return copy


def test_bad_samples_are_skipped_and_counted(lossless, tmp_path):
    copy = _damaged_copy(lossless, tmp_path)
    dataset = LayeredVideoDataset(copy, sampling="uniform", **SMALL)
    assert dataset.skipped == {"bad metadata": 1}
    assert len(dataset) == 4  # clip_0..2 and short; the damaged ones are found when read
    ids = [dataset[index]["id"] for index in range(len(dataset))]
    assert "clip_1" not in ids and "short" not in ids
    assert set(ids) <= {"clip_0", "clip_2"}
    assert dataset.skipped == {"bad metadata": 1, "unreadable": 1, "too few frames": 1}
    reasons = dict(dataset.skipped_samples)
    assert "mask 2" in reasons["clip_1"] and "5 frames" in reasons["short"]


def test_a_dataset_with_nothing_usable_is_one_clear_error(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.json").write_text("[]")
    with pytest.raises(ValueError, match="no usable sample.*--check-data"):
        LayeredVideoDataset(tmp_path, **SMALL)
    _numbered_clip(tmp_path / "short", 5)
    dataset = LayeredVideoDataset(tmp_path, **SMALL)
    with pytest.raises(RuntimeError, match="every sample .* unusable.*9"):
        dataset[0]
    with pytest.raises(FileNotFoundError, match="no dataset"):
        LayeredVideoDataset(tmp_path / "missing", **SMALL)


def test_batches_group_samples_by_foreground_count(lossless):
    root, _ = lossless
    dataset = LayeredVideoDataset(root, sampling="uniform", **SMALL)
    with pytest.raises(ValueError, match="ForegroundGroupBatchSampler"):
        collate_layered([dataset[0], dataset[1]])
    sampler = ForegroundGroupBatchSampler([1, 2, 1, 3, 2, 1], batch_size=2, seed=1)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(6)) and len(sampler) == 4
    counts = [1, 2, 1, 3, 2, 1]
    assert all(len({counts[i] for i in batch}) == 1 for batch in batches)
    loader = DataLoader(dataset, batch_sampler=ForegroundGroupBatchSampler(dataset, 2), collate_fn=collate_layered)
    batch = next(iter(loader))
    assert batch["full"].shape[0] == 1 and batch["foregrounds"].dim() == 6
    assert isinstance(batch["captions"]["foregrounds"][0], list) and len(batch["id"]) == 1


def test_check_dataset_reports_counts_and_bad_samples(lossless, tmp_path):
    copy = _damaged_copy(lossless, tmp_path)
    report = check_dataset(copy, frames=9)
    assert report.status == 0 and report.total == 5 and report.usable == 2
    assert dict(report.by_foregrounds) == {1: 1, 3: 1}
    assert dict(report.frame_counts) == {9: 2} and dict(report.sizes) == {"32x32": 2}
    assert {sample_id for sample_id, _ in report.bad} == {"broken", "clip_1", "short"}
    text = report.format()
    assert "2 of 5 sample(s) usable" in text and "short: has 5 frames" in text
    empty = check_dataset(tmp_path / "nowhere")
    assert empty.status == 1 and "nothing usable" in empty.format()


def test_check_data_command_line(lossless, tmp_path, capsys):
    root, _ = lossless
    assert main(["--check-data", str(root), "--frames", "9"]) == 0
    assert "3 of 3 sample(s) usable" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "train/data.py", "--check-data", str(tmp_path / "empty")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "0 of 0 sample(s) usable" in result.stdout
