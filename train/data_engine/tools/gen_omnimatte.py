"""Foreground removal by Generative Omnimatte's Casper model (github gen-omnimatte/gen-omnimatte-public) for the
data engine's command backend.

    --remover command --remove-command "python train/data_engine/tools/gen_omnimatte.py {video} {alpha} {out}
        --repo /path/to/gen-omnimatte-public --python /path/to/its-env/bin/python
        --model /path/to/CogVideoX-Fun-V1.5-5b-InP --transformer /path/to/casper.safetensors"

Options it does not know are passed on to predict_v2v.py (e.g. --config.system.gpu_memory_mode=model_cpu_offload).

Lays the clip out as one of Casper's sequences (`input_video.mp4`, `mask_00.mp4`, `prompt.json` with the
background prompt), runs its `inference/<backbone>/predict_v2v.py`, and moves the video with every foreground
removed (`<sequence>-fg=-1-0001.mp4`) to `<out>/background.mp4`. Casper works at its own size and pads the clip in
time to its window; the engine resizes the result to the clip and keeps its first frames. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SEQUENCE = "clip"
PROMPT = "a clean background video, nothing in front of it"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="the clip, mp4")
    parser.add_argument("alpha", help="the foregrounds' union alpha, mp4, white = remove")
    parser.add_argument("out", help="an empty folder; background.mp4 is written in it")
    parser.add_argument("--repo", required=True, help="a gen-omnimatte-public checkout")
    parser.add_argument("--python", default=sys.executable, help="the Python of its environment")
    parser.add_argument("--backbone", choices=("cogvideox_fun", "wan2.1_fun"), default="cogvideox_fun")
    parser.add_argument("--model", required=True, help="the VideoX-Fun inpainting model folder")
    parser.add_argument("--transformer", required=True, help="the Casper transformer weights (.safetensors)")
    parser.add_argument("--prompt", default=PROMPT, help="what the background shows")
    args, extra = parser.parse_known_args(argv)  # the rest goes to the tool
    script = Path(args.repo) / "inference" / args.backbone / "predict_v2v.py"
    if not script.is_file():
        parser.error(f"{script} does not exist: --repo must be a gen-omnimatte-public checkout")
    out = Path(args.out)
    sequence = out / "sequences" / SEQUENCE
    sequence.mkdir(parents=True)
    shutil.copy(args.video, sequence / "input_video.mp4")
    shutil.copy(args.alpha, sequence / "mask_00.mp4")
    (sequence / "prompt.json").write_text(json.dumps({"bg": args.prompt}))
    results = out / "results"
    command = [args.python, str(script), f"--config.data.data_rootdir={sequence.parent}",
               f"--config.experiment.run_seqs={SEQUENCE}", f"--config.experiment.save_path={results}",
               f"--config.video_model.model_name={args.model}",
               f"--config.video_model.transformer_path={args.transformer}", *extra]
    done = subprocess.run(command, cwd=args.repo)  # its config paths are relative to the checkout
    if done.returncode != 0:
        print(f"Casper exited with {done.returncode}", file=sys.stderr)
        return done.returncode
    found = sorted(p for p in results.glob(f"{SEQUENCE}-fg=-1-*.mp4") if not p.stem.endswith("_tuple"))
    if not found:
        print(f"Casper wrote no {SEQUENCE}-fg=-1-*.mp4 in {results}", file=sys.stderr)
        return 1
    os.replace(found[-1], out / "background.mp4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
