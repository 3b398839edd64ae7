"""Fully sharded training: two CPU processes under `accelerate launch`, sharded checkpoints, an exact resume."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from training_world import write_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("fsdp"), data=(8, 1))


def launch_stage2(world, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           os.path.join(ROOT, "train", "stage2.py"), "--config", os.path.join(ROOT, "train", "configs", "tiny_cpu.yaml"),
           "--model", str(world / "model"), "--data", str(world / "data"), "--output-dir", str(out), "--fsdp", "true",
           "--max-steps", "3", "--save-every", "2", "--warmup-steps", "1", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]


def test_fsdp_checkpoints_shard_by_shard_and_resumes_exactly(world, tmp_path):
    """3 steps straight, against the step-2 sharded checkpoint resumed for step 3 (lr is not 0 there)."""
    straight = tmp_path / "straight"
    assert "2 process(es) x batch 2" in launch_stage2(world, straight)
    checkpoint = straight / "checkpoint-0000002"
    # One shard file and one random state per process: the tensors were written sharded, not gathered.
    assert sorted(p.name for p in (checkpoint / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (checkpoint / "rng-0.pt").exists() and (checkpoint / "rng-1.pt").exists()
    assert not (checkpoint / "trainable.safetensors").exists()

    split = tmp_path / "split"
    split.mkdir()
    shutil.copytree(checkpoint, split / checkpoint.name)
    (split / "log.jsonl").write_text("\n".join((straight / "log.jsonl").read_text().splitlines()[:2]) + "\n")
    assert "resumed from" in launch_stage2(world, split, "--resume", "latest")
    assert len(losses(split)) == 3 and losses(split) == losses(straight)
    expected = load_file(str(straight / "final" / "adapter.safetensors"))
    resumed = load_file(str(split / "final" / "adapter.safetensors"))
    assert set(resumed) == set(expected)
    assert any(v.abs().max() > 0 for k, v in expected.items() if "lora_B" in k or "lora_up" in k)  # it trained
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
