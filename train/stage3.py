"""Stage 3 — multi-foreground extension: continue from the stage-2 adapter with extra fg/mask pairs; the new
LayerAdaLN rows start from the single-foreground ones; trained on multi-subject samples.

    python train/stage3.py --config train/configs/stage3_wan13b.yaml --adapter runs/stage2/final/adapter.safetensors
"""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.dit_task import MultiForegroundTask  # noqa: E402
from train.entry import run_stage  # noqa: E402


if __name__ == "__main__":
    sys.exit(run_stage(__doc__, MultiForegroundTask, {"output_dir": "runs/stage3", "max_foregrounds": 3}))
