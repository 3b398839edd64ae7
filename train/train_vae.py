"""Train a Wan2.1-architecture VAE from scratch (the demo model's; real runs use Wan's own VAE).

    python train/train_vae.py --config train/configs/tiny_cpu.yaml --data synthetic/ --output-dir runs/vae
"""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.entry import run_stage  # noqa: E402
from train.vae_task import VAETask  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage(__doc__, VAETask, {"output_dir": "runs/vae", "max_foregrounds": 3}))
