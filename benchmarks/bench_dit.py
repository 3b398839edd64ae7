"""DiT forward: our time and peak memory over diffusers' on the same weights, and layered over plain.

    python benchmarks/bench_dit.py [--dim 512 --layers 8 --frames 3 --size 32 --repeats 5 --device cpu]

Equal work: both sides embed the context padded to Wan's 512 rows and run the same forward; no cache. Times
alternate between the cases round by round (the order flips every round), and the ratios are medians of the
per-round ratios, with their spread, so a machine shared with other jobs shifts both sides alike. On CPU the clock
is this process' CPU time (wall time on a shared machine mostly measures the other jobs); on CUDA, wall time.
Targets: ours/diffusers <= 0.95 (time) and <= 1.0 (peak); layered/plain <= 1.05 (the layer modules nearly free).
Peak memory is measured on CPU as the growth of the process' peak RSS during one forward, each case in a fresh
process; on CUDA with torch.cuda.max_memory_allocated.
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

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from layert2v_core import LayerSpec, load_dit  # noqa: E402


def build(args, folder: str):
    """A random diffusers model saved in diffusers layout; ours is loaded from that same file."""
    import diffusers
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(num_attention_heads=args.dim // 128, attention_head_dim=128,
                                          text_dim=4096, ffn_dim=args.dim * 4, num_layers=args.layers,
                                          freq_dim=256).eval()
    ref.save_pretrained(folder)
    return ref


def inputs(args, device):
    spec = LayerSpec(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, spec.num_segments * args.frames, args.size, args.size, generator=g).to(device)
    t = torch.tensor([500.0], device=device)
    lens = torch.tensor([[120, 60, 60]])
    ctx = torch.zeros(1, 512, 4096)
    ctx[:, :240] = torch.randn(1, 240, 4096, generator=g)
    return spec, x, t, ctx.to(device), lens


def case_fn(name: str, args, folder: str):
    device = torch.device(args.device)
    spec, x, t, ctx, lens = inputs(args, device)
    if name == "diffusers":
        import diffusers
        model = diffusers.WanTransformer3DModel.from_pretrained(folder).eval().to(device)
        return lambda: model(x, t, ctx, return_dict=False)[0]
    model = load_dit(folder, device=device)
    if name == "ours_plain":
        return lambda: model(x, t, ctx)
    return lambda: model(x, t, ctx, layer_spec=spec, prompt_lens=lens)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_alternating(fns: dict, args) -> dict[str, list[float]]:
    """Seconds of each case in each round; every round runs all cases, in reversed order every other round."""
    times = {name: [] for name in fns}
    clock = time.perf_counter if args.device.startswith("cuda") else time.process_time
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for round_ in range(args.repeats):
            order = list(fns) if round_ % 2 == 0 else list(reversed(fns))
            for name in order:
                sync(args.device)
                start = clock()
                fns[name]()
                sync(args.device)
                times[name].append(clock() - start)
    return times


def ratio(times: dict, a: str, b: str) -> str:
    r = sorted(x / y for x, y in zip(times[a], times[b]))
    return f"{statistics.median(r):.3f}  (spread {r[0]:.3f}-{r[-1]:.3f} over {len(r)} rounds)"


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def peak_case(name: str, args, folder: str) -> int:
    """Peak memory growth of one forward (bytes), measured in this process."""
    fn = case_fn(name, args, folder)
    with torch.no_grad():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            return torch.cuda.max_memory_allocated() - base
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = rss("VmRSS:")
        fn()
        return rss("VmHWM:") - base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--frames", type=int, default=3, help="latent frames per segment (4 segments)")
    p.add_argument("--size", type=int, default=32, help="latent height = width (tokens: size/2 per side)")
    p.add_argument("--repeats", type=int, default=7, help="alternating rounds")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak-of", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_of:  # child process: one peak measurement
        print(json.dumps(peak_case(args.peak_of, args, args.folder)))
        return

    with tempfile.TemporaryDirectory() as folder:
        build(args, folder)
        tokens = 4 * args.frames * (args.size // 2) ** 2
        print(f"config: dim {args.dim}, {args.layers} layers, {tokens} tokens (4 x {args.frames}x"
              f"{args.size // 2}x{args.size // 2}), device {args.device}, torch threads {torch.get_num_threads()}")
        names = ("diffusers", "ours_plain", "ours_layered")
        times = time_alternating({n: case_fn(n, args, folder) for n in names}, args)
        peaks = {}
        for n in names:
            cmd = [sys.executable, __file__, "--peak-of", n, "--folder", folder] + [
                f"--{k}={v}" for k, v in vars(args).items() if k not in ("peak_of", "folder") and v is not None]
            peaks[n] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        print("equal work: Wan2.1 forward, context padded to 512 rows on both sides, no cache")
        for n in names:
            print(f"{n:>13}: {statistics.median(times[n]) * 1000:8.1f} ms (median)  peak +{peaks[n] / 2**20:7.1f} MiB")
        print(f"time  ours/diffusers  : {ratio(times, 'ours_plain', 'diffusers')}  (target <= 0.95)")
        print(f"peak  ours/diffusers  : {peaks['ours_plain'] / peaks['diffusers']:.3f}  (target <= 1.0)")
        print(f"time  layered/plain   : {ratio(times, 'ours_layered', 'ours_plain')}  (target <= 1.05)")
        print(f"peak  layered/plain   : {peaks['ours_layered'] / peaks['ours_plain']:.3f}")


if __name__ == "__main__":
    main()
