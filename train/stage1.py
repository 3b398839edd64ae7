"""Stage 1 — alpha VAE adaptation: Wan encoder frozen, projection head + decoder LoRA trained on mattes.

    python train/stage1.py --config train/configs/stage1_wan13b.yaml --data VidLayer/ --vae Wan2.1_VAE.pth
"""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.entry import run_stage  # noqa: E402
from train.mask_vae_task import MaskVAETask  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage(__doc__, MaskVAETask, {"output_dir": "runs/stage1", "max_foregrounds": 3}))
