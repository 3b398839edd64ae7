"""Decode time and peak memory of our Wan2.1 VAE against diffusers' AutoencoderKLWan, same random weights, CPU.

Equal work: the same latent, the same weights, untiled and tiled alike. Time: one process holds both models and
alternates them for `--repeats` rounds (order flipped every round); the ratio is the median of the per-round
ratios, with its spread, in this process' CPU time (wall time on a shared machine mostly measures the other
jobs). Peak: each (implementation, tiling) pair decodes once in its own process under the torch
profiler, whose CPU allocation record gives the peak tensor memory.

    python benchmarks/bench_vae.py                # 384x672, 9 frames, base width 8 (reduced from 96)
    python benchmarks/bench_vae.py --dim 96 --frames 9 --height 128 --width 224
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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


def decoders(args, tiled: bool, impls=("ours", "diffusers")) -> dict:
    """Decode functions of the same random weights and latent, warmed up, by implementation."""
    import torch
    sys.path.insert(0, str(ROOT))
    ref = _reference(args.dim)
    latent = torch.randn(1, 16, 1 + (args.frames - 1) // 4, args.height // 8, args.width // 8,
                         generator=torch.Generator().manual_seed(1))
    runs = {}
    if "ours" in impls:
        from layert2v_core import load_vae
        from layert2v_core.vae_tiling import Tiling
        with tempfile.TemporaryDirectory() as tmp:
            ref.save_pretrained(tmp)
            vae = load_vae(tmp)
        tile = Tiling(args.tile, args.tile - args.stride) if tiled else None
        runs["ours"] = lambda: vae.decode(latent, tile=tile)
        with torch.no_grad():  # first-call library set-up stays out of the timing
            vae.decode(latent[:, :, :2, :8, :8])
    if "diffusers" in impls:
        if tiled:
            ref.enable_tiling(args.tile, args.tile, args.stride, args.stride)
        mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
        std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
        runs["diffusers"] = lambda: ref.decode(latent * std + mean).sample
        with torch.no_grad():
            ref.decode(latent[:, :, :2, :8, :8])
    return runs


def time_worker(tiled: bool, args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    runs = decoders(args, tiled)
    seconds = {name: [] for name in runs}
    with torch.no_grad():
        for run in runs.values():  # one untimed round: oneDNN builds its kernels for each new shape on first use
            run()
        for round_ in range(args.repeats):
            for name in (list(runs) if round_ % 2 == 0 else list(reversed(runs))):
                start = time.process_time()
                runs[name]()
                seconds[name].append(time.process_time() - start)
    print(json.dumps(seconds))


def peak_worker(impl: str, tiled: bool, args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    run = decoders(args, tiled, (impl,))[impl]
    with torch.no_grad():
        peak = _peak_bytes(run)
    print(json.dumps({"peak": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8, help="VAE base width (the real model has 96)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=672)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels")
    parser.add_argument("--stride", type=int, default=192, help="tile stride in pixels (overlap = tile - stride)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "TILED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, tiled = args.worker[0], args.worker[1] == "1"
        time_worker(tiled, args) if impl == "time" else peak_worker(impl, tiled, args)
        return

    def child(impl: str, tiled: bool):
        cmd = [sys.executable, __file__, "--worker", impl, str(int(tiled))] + [
            f"--{k}={getattr(args, k)}" for k in ("dim", "height", "width", "frames", "tile", "stride", "threads",
                                                   "repeats")]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    print(f"config: {args.height}x{args.width}x{args.frames}, base width {args.dim}, tile {args.tile} px "
          f"stride {args.stride} px, {args.threads} threads; equal work: same latent and weights on both sides",
          flush=True)
    peaks = {}
    for tiled in (False, True):
        label = "tiled  " if tiled else "untiled"
        seconds = child("time", tiled)
        peaks.update({(impl, tiled): child(impl, tiled)["peak"] for impl in ("ours", "diffusers")})
        ratios = sorted(o / d for o, d in zip(seconds["ours"], seconds["diffusers"]))
        for impl in ("ours", "diffusers"):
            print(f"{impl:9s} {label}  {statistics.median(seconds[impl]):8.2f} s (median)  "
                  f"peak {peaks[impl, tiled] / 2**20:9.1f} MiB", flush=True)
        print(f"{label} ours/diffusers: time {statistics.median(ratios):.3f} (spread {ratios[0]:.3f}-"
              f"{ratios[-1]:.3f} over {len(ratios)} rounds; target <= 0.95)  "
              f"peak {peaks['ours', tiled] / peaks['diffusers', tiled]:.3f}", flush=True)
    print(f"ours tiled/untiled peak: {peaks['ours', True] / peaks['ours', False]:.3f}")


if __name__ == "__main__":
    main()
