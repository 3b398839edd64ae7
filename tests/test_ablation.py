"""The ablation's baseline really is the baseline: LayerAdaLN frozen at zero, shared routing recorded; its table."""
import os

import torch

from layert2v_core import load_dit
from train.ablation import COLUMNS, VARIANTS, table
from train.config import parse_config
from train.dit_task import DiTTask
from train.loop import train
from train.synthetic import write_dataset
from train.tiny_models import write_model_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "train", "configs", "tiny_cpu.yaml")


def test_baseline_trains_without_layer_adaln_and_records_shared_routing(tmp_path):
    write_dataset(tmp_path / "data", samples=2, seed=1, frames=5, height=32, width=32, max_foregrounds=1,
                  split="train", lossless=True)
    write_model_folder(tmp_path / "model", seed=0, num_foregrounds=1)
    runs = {}
    for name, layer_adaln in (("frozen", "false"), ("trained", "true")):
        cfg = parse_config("test", ["--config", TINY, "--model", str(tmp_path / "model"), "--output-dir",
                                    str(tmp_path / name), "--data", str(tmp_path / "data"), "--max-steps", "2",
                                    "--lr", "1e-2", "--lora-rank", "0", "--routing-policy", "shared",
                                    "--layer-adaln", layer_adaln, "--lambda-mask", "0"])
        task = DiTTask(cfg)
        assert task.dit.layer_adaln.layer_modulation.requires_grad == (layer_adaln == "true")
        runs[name] = load_dit(train(task, cfg) / "dit.safetensors")
    assert torch.count_nonzero(runs["frozen"].layer_adaln.layer_modulation) == 0
    assert torch.count_nonzero(runs["trained"].layer_adaln.layer_modulation) > 0
    assert runs["frozen"].config.routing_policy == "shared"  # generation follows the routing it trained with
    # everything else trained: the frozen table is the only difference in what was learnt
    assert not torch.equal(runs["frozen"].blocks[0].self_attn.q.weight, runs["trained"].blocks[0].self_attn.q.weight)


def test_ablation_table_rows_and_columns():
    row = {"vbench": {"temporal_flickering": {"FG": 0.5, "BG": 0.25, "BL": 0.125}},
           "layers": {"fg_presence": 0.75, "world_colour_match": 1.0}}
    results = {"plan": {"dit": {"dim": 8}, "steps": 3, "batch": 2, "single": 4, "size": 32, "frames": 5,
                        "eval_seeds": 2, "eval_steps": 3},
               "seconds": {"data and cache": 1.0},
               "variants": {name: {"aggregate": row, "truth": row} for name in VARIANTS}}
    text = table(results, "--quick")
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(lines) == 1 + len(VARIANTS) + 1  # header, three variants, ground truth
    assert lines[1].startswith("| baseline (temporal concatenation) | 0.5000 | 0.2500 | 0.1250 | — | 0.7500 |")
    assert lines[0].count("|") == len(COLUMNS) + 2
