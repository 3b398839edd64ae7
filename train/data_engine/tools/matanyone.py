"""Matting by MatAnyone (github pq-yang/MatAnyone) for the data engine's command backend.

    --matter command --matte-command "python train/data_engine/tools/matanyone.py {video} {mask} {out}
        --repo /path/to/MatAnyone --python /path/to/matanyone-env/bin/python"

Options it does not know are passed on to MatAnyone (e.g. --max_size 720).

Runs MatAnyone's own `inference_matanyone.py` on the clip and its first-frame mask with `--save_image`, then moves
its per-frame alpha PNGs (`<out>/raw/<clip name>/pha/`) to `<out>/alpha`, the folder the engine reads. Standard
library only, so it runs with any Python; MatAnyone runs with the one given by --python (its own environment, which
downloads its checkpoint on first use).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="the clip (mp4, or a folder of frames)")
    parser.add_argument("mask", help="first-frame mask PNG, white = the subject")
    parser.add_argument("out", help="an empty folder; alpha/ is written in it")
    parser.add_argument("--repo", required=True, help="a MatAnyone checkout (holds inference_matanyone.py)")
    parser.add_argument("--python", default=sys.executable, help="the Python of MatAnyone's environment")
    args, extra = parser.parse_known_args(argv)  # the rest goes to the tool
    script = Path(args.repo) / "inference_matanyone.py"
    if not script.is_file():
        parser.error(f"{script} does not exist: --repo must be a MatAnyone checkout")
    raw = Path(args.out) / "raw"
    command = [args.python, str(script), "-i", args.video, "-m", args.mask, "-o", str(raw), "--save_image", *extra]
    done = subprocess.run(command, cwd=args.repo)  # MatAnyone resolves its checkpoint folder from its checkout
    if done.returncode != 0:
        print(f"MatAnyone exited with {done.returncode}", file=sys.stderr)
        return done.returncode
    name = Path(args.video).name
    name = name[:-4] if Path(args.video).is_file() else name  # MatAnyone drops a 4-character extension
    frames = raw / name / "pha"
    if not frames.is_dir() or not any(frames.iterdir()):
        print(f"MatAnyone wrote no alpha frames in {frames}", file=sys.stderr)
        return 1
    os.replace(frames, Path(args.out) / "alpha")
    return 0


if __name__ == "__main__":
    sys.exit(main())
