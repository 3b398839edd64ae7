"""Decode time and peak memory of our Wan2.1 VAE against diffusers' AutoencoderKLWan, same random weights, CPU.

Each (implementation, tiling) pair runs in its own process: one timed decode, then one decode under the torch
profiler whose CPU allocation record gives the peak tensor memory. Prints our/diffusers ratios and tiled/untiled.

    python benchmarks/bench_vae.py                # 384x672, 41 frames, base width 8 (reduced from 96)
    python benchmarks/bench_vae.py --dim 96 --frames 9
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _reference(dim: int):
    import torch
    from diffusers import AutoencoderKLWan
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=dim, z_dim=16).eval()


def _peak_bytes(run) -> int:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        memory = [e["args"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    base = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(m["Total Allocated"] for m in memory) - base


def worker(impl: str, tiled: bool, args) -> None:
    import torch
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(args.threads)
    ref = _reference(args.dim)
    latent = torch.randn(1, 16, 1 + (args.frames - 1) // 4, args.height // 8, args.width // 8,
                         generator=torch.Generator().manual_seed(1))
    if impl == "ours":
        from layert2v_core import load_vae
        from layert2v_core.vae_tiling import Tiling
        with tempfile.TemporaryDirectory() as tmp:
            ref.save_pretrained(tmp)
            vae = load_vae(tmp)
        del ref
        tile = Tiling(args.tile, args.tile - args.stride) if tiled else None
        run = lambda: vae.decode(latent, tile=tile)
    else:
        if tiled:
            ref.enable_tiling(args.tile, args.tile, args.stride, args.stride)
        mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
        std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
        run = lambda: ref.decode(latent * std + mean).sample
    with torch.no_grad():
        warm = latent[:, :, :2, :8, :8]  # first-call library set-up stays out of the timing
        vae.decode(warm) if impl == "ours" else ref.decode(warm)
        seconds = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run()
            seconds = min(seconds, time.perf_counter() - start)
            del out
        peak = _peak_bytes(run)
    print(json.dumps({"seconds": seconds, "peak": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8, help="VAE base width (the real model has 96)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=672)
    parser.add_argument("--frames", type=int, default=41)
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels")
    parser.add_argument("--stride", type=int, default=192, help="tile stride in pixels (overlap = tile - stride)")
    parser.add_argument("--repeats", type=int, default=1, help="timed decodes per case; the fastest counts")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "TILED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1] == "1", args)
        return
    results = {}
    for impl in ("ours", "diffusers"):
        for tiled in (False, True):
            cmd = [sys.executable, __file__, "--worker", impl, str(int(tiled))] + [
                f"--{k}={getattr(args, k)}" for k in ("dim", "height", "width", "frames", "tile", "stride", "threads", "repeats")]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[impl, tiled] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[impl, tiled]
            print(f"{impl:9s} {'tiled  ' if tiled else 'untiled'}  {r['seconds']:8.2f} s  "
                  f"peak {r['peak'] / 2**20:9.1f} MiB", flush=True)
    print(f"config: {args.height}x{args.width}x{args.frames}, base width {args.dim}, tile {args.tile} px "
          f"stride {args.stride} px, {args.threads} threads")
    for tiled in (False, True):
        ours, ref = results["ours", tiled], results["diffusers", tiled]
        label = "tiled  " if tiled else "untiled"
        print(f"{label} ours/diffusers: time {ours['seconds'] / ref['seconds']:.3f}  "
              f"peak {ours['peak'] / ref['peak']:.3f}")
    print(f"ours tiled/untiled peak: {results['ours', True]['peak'] / results['ours', False]['peak']:.3f}")


if __name__ == "__main__":
    main()
