"""Training runs that must repeat exactly and survive what a crash, a full disk or a bad sample leaves behind:
identical seeds give identical runs, a broken latest checkpoint falls back to the previous one, the log never
repeats a step, skipped samples are reported. Tiny CPU config, a few steps."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from train.dit_task import DiTTask
from train.entry import run_stage
from training_world import write_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "train", "configs", "tiny_cpu.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("faults"), data=(3, 1))


def stage2(world, out, *extra):
    argv = ["--config", TINY, "--model", str(world / "model"), "--data", str(world / "data"), "--output-dir",
            str(out), "--lambda-mask", "0", "--warmup-steps", "1", *extra]
    assert run_stage("test", DiTTask, {"max_foregrounds": 1}, argv) == 0
    return out


def log_records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """Four steps, checkpoints at 2 and 4."""
    return stage2(world, tmp_path_factory.mktemp("run") / "run", "--max-steps", "4", "--save-every", "2",
                  "--keep-last", "3")


def test_two_identical_runs_give_identical_losses_and_adapters(world, finished, tmp_path):
    torch.manual_seed(12345)  # whatever ran before must not matter
    again = stage2(world, tmp_path / "again", "--max-steps", "4", "--save-every", "2", "--keep-last", "3")
    assert [r["loss"] for r in log_records(again)] == [r["loss"] for r in log_records(finished)]
    first, second = load_file(finished / "final" / "adapter.safetensors"), load_file(again / "final" /
                                                                                      "adapter.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def break_trainable(folder):
    data = (folder / "trainable.safetensors").read_bytes()
    (folder / "trainable.safetensors").write_bytes(data[:len(data) // 2])
    return "trainable.safetensors"


def break_state(folder):
    (folder / "state.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    return "state.pt"


def break_progress(folder):
    (folder / "progress.json").write_text("")
    return "progress.json"


@pytest.mark.parametrize("damage", [break_trainable, break_state, break_progress])
def test_a_broken_latest_checkpoint_falls_back_to_the_previous_one(world, finished, tmp_path, damage, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "final")
    broken = damage(run / "checkpoint-0000004")
    capsys.readouterr()
    stage2(world, run, "--max-steps", "4", "--save-every", "2", "--keep-last", "3", "--resume", "latest")
    printed = capsys.readouterr().out
    assert f"skipped checkpoint-0000004: {broken}" in printed, printed
    assert "resumed from" in printed and "checkpoint-0000002 at step 2" in printed
    records = log_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # steps 3 and 4 are logged once, by the resumed run
    assert [r["loss"] for r in records] == [r["loss"] for r in log_records(finished)]


def test_a_named_broken_checkpoint_is_explained(world, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    break_state(run / "checkpoint-0000002")
    with pytest.raises(SystemExit, match="checkpoint-0000002.*state.pt"):
        stage2(world, run, "--max-steps", "4", "--resume", str(run / "checkpoint-0000002"))


def test_skipped_samples_are_counted_in_the_log(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    victim = sorted(data.glob("*/full_video"))[0] / "frame_00002.png"
    victim.write_bytes(victim.read_bytes()[:64])
    argv = ["--config", TINY, "--model", str(world / "model"), "--data", str(data), "--output-dir",
            str(tmp_path / "out"), "--lambda-mask", "0", "--max-steps", "2", "--save-every", "100"]
    assert run_stage("test", DiTTask, {"max_foregrounds": 1}, argv) == 0
    records = log_records(tmp_path / "out")
    assert records[-1]["skipped_samples"] == 1 and records[-1]["skipped"] == {"unreadable": 1}
    assert f"skipped sample {victim.parent.parent.name}: cannot read full video" in capsys.readouterr().out


def test_stage_help_describes_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        run_stage("Stage 2 - joint multi-layer training", DiTTask, {"output_dir": "runs/stage2"}, ["--help"])
    text = capsys.readouterr().out
    flat = " ".join(text.split())  # argparse wraps to the terminal's width
    assert "Stage 2 - joint multi-layer training" in flat
    assert "--lr LR AdamW learning rate (default: 0.0001)" in flat and "(default: runs/stage2)" in flat
    assert "effective batch" in flat  # batch_size's description
    lines = text.split("\n  --")[2:]  # after --help and --config (a file, no default)
    undocumented = [line.split()[0] for line in lines if "default:" not in line.replace("\n", " ")]
    assert undocumented == [], undocumented
