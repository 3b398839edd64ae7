"""Stage 2 — joint multi-layer training: VAEs and T5 frozen; DiT LoRA + LayerAdaLN (+ routing) trained with
L_FM + λ_cons·L_cons + λ_mask·L_mask on single-foreground samples.

    python train/stage2.py --config train/configs/stage2_wan13b.yaml --data VidLayer/ --model wan2.1/ \
        --mask-vae runs/stage1/final/mask_vae.safetensors
    accelerate launch --num_processes 8 train/stage2.py --config ...
"""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.dit_task import DiTTask  # noqa: E402
from train.entry import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage(__doc__, DiTTask, {"output_dir": "runs/stage2", "max_foregrounds": 1}))
