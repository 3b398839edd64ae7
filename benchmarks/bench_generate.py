"""End-to-end layered generation with random weights of the real shapes, at the paper's setting by default.

    python benchmarks/bench_generate.py --device cuda                   # 384x672, 41 frames, 1 foreground, 50 steps
    python benchmarks/bench_generate.py --device cpu --dim 128 --layers 2 --vae-dim 8 --height 64 --width 64 \
        --frames 5 --timed-steps 2 --train-sizes 32x32x5                # a reduced size that runs on a CPU

Wan2.1 1.3B DiT, the Wan VAE and the alpha VAE (LoRA decoder), all random; prompt embeddings are random too, so no
text encoder runs. Every variant samples `--timed-steps` steps of the `--steps` schedule after two warm-up steps and
extrapolates the DiT time to `--steps` (printed as such); the VAE decode of every layer and the alpha decode run in
full once. Per variant: seconds per step, the DiT phase, peak accelerator memory, and the fraction of the FLOP floor
(steps x CFG passes x analytic DiT FLOPs / `--peak-tflops`) reached. Variants: sdpa (exact SDPA in `--dtype`,
bf16 by default, batched CFG, the forward cache), uncached (sdpa recomputing context K/V, routing bias and
LayerAdaLN rows every step), cfg_sequential, cudnn (SDPA pinned to cuDNN), sage (SageAttention, when installed),
compile (torch.compile per block), offload (block by block under `--offload-cap-gb`), fp8 (fp8-stored block
weights). Then stage-2 training steps (LoRA rank 128, gradient checkpointing, bf16, DiT flow-matching loss) at each
of `--train-sizes`.
The default run is meant to fit in 8 minutes on one H200; if it does not, lower --timed-steps or --train-steps or
drop variants.
Results go to stdout and, as JSON, to `--json`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from layert2v_core.atomic import write_json  # noqa: E402
from layert2v_core.attention_kernels import sage_attention_available, sage_self_attention  # noqa: E402
from layert2v_core.dit import DiTConfig, WanDiT  # noqa: E402
from layert2v_core.fp8 import quantize_linears_fp8  # noqa: E402
from layert2v_core.layers import LayerSpec  # noqa: E402
from layert2v_core.mask_vae import MaskVAE  # noqa: E402
from layert2v_core.offload import blocks_on_demand  # noqa: E402
from layert2v_core.sampling import cfg_velocity, dit_model_fn, flow_sigmas, sample, seeded_noise  # noqa: E402
from layert2v_core.vae import VAEConfig, WanVAE  # noqa: E402

VARIANTS = ("sdpa", "uncached", "cfg_sequential", "cudnn", "sage", "compile", "offload", "fp8")
GB = 1e9


# ---------------------------------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_accelerator_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None


def peak_host_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux reports KiB


@contextlib.contextmanager
def phase(device: torch.device, into: dict, name: str):
    """Wall time of a phase; the only host/device synchronisations of a run are here, around phases."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    into[name] = time.perf_counter() - start


def dit_flops(cfg: DiTConfig, tokens: int, context_rows: int) -> float:
    """Multiply-adds x 2 of one DiT forward of one sample (linears and attention; norms and RoPE left out)."""
    d, f = cfg.dim, cfg.ffn_dim
    per_block = (4 * tokens * d * d            # self-attention q, k, v, o
                 + 2 * tokens * tokens * d     # q k^T and p v
                 + 2 * tokens * d * d          # cross-attention q, o
                 + 2 * context_rows * d * d    # cross-attention k, v of the context
                 + 2 * tokens * context_rows * d
                 + 2 * tokens * d * f)         # FFN
    return 2.0 * cfg.num_layers * per_block


# ---------------------------------------------------------------------------------------------------- models


def make_dit(args, device: torch.device, dtype: torch.dtype) -> WanDiT:
    cfg = DiTConfig(dim=args.dim, num_heads=args.heads, ffn_dim=args.ffn_dim, num_layers=args.layers)
    torch.manual_seed(0)
    with torch.device(device):
        dit = WanDiT(cfg)
    with torch.no_grad():
        dit.layer_adaln.layer_modulation.normal_(0, 0.02)
    return dit.to(dtype).eval().requires_grad_(False)


def make_vaes(args, device: torch.device, dtype: torch.dtype) -> tuple[WanVAE, MaskVAE]:
    torch.manual_seed(1)
    with torch.device(device):
        vae = WanVAE(VAEConfig(dim=args.vae_dim))
        mask_vae = MaskVAE(vae)
    return vae.to(dtype).eval().requires_grad_(False), mask_vae.to(dtype).eval().requires_grad_(False)


def conditioning(args, spec: LayerSpec, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    """Random umt5-like contexts: the prompt lengths of a typical request, Wan's long default negative prompt."""
    g = torch.Generator().manual_seed(2)
    rows = 512
    cond_lens = torch.tensor([[args.prompt_tokens] + [args.prompt_tokens // 2] * (spec.num_prompts - 1)])
    uncond_lens = torch.tensor([[args.negative_tokens] * spec.num_prompts])
    out = []
    for lens in (cond_lens, uncond_lens):
        context = torch.zeros(1, rows, 4096)
        used = int(lens.sum())
        context[:, :used] = torch.randn(1, used, 4096, generator=g) * 0.1
        out.append({"context": context.to(device, dtype), "prompt_lens": lens})
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------- generation


def run_dit(dit: WanDiT, args, spec: LayerSpec, cond: dict, uncond: dict, device: torch.device,
            batched: bool = True, cached: bool = True) -> tuple[torch.Tensor, dict]:
    """Two warm-up steps (the first fills the forward caches, the second uses them: torch.compile sees both), then
    `timed_steps` steps of the schedule; no synchronisation inside the step loop."""
    frames = (args.frames - 1) // 4 + 1
    shape = (1, 16, spec.num_segments * frames, args.height // 8, args.width // 8)
    noise = seeded_noise(shape, 0, device=device)
    sigmas = flow_sigmas(args.steps, args.shift)

    def denoise(model_calls: int) -> torch.Tensor:
        # The first sigmas of the schedule, then a last step onto 0: `model_calls` forwards of the real schedule.
        part = torch.cat([sigmas[:model_calls], sigmas.new_zeros(1)])
        velocity = cfg_velocity(dit_model_fn(dit, spec, cached), cond, uncond, args.guidance, batched=batched)
        latent = sample(velocity, noise, part)
        times["cfg_batched"] = velocity.batched  # False when batched CFG ran out of memory and fell back
        return latent

    times: dict = {}
    with phase(device, times, "warmup_s"):
        denoise(2)
    reset_peak(device)
    with phase(device, times, "timed_s"):
        latent = denoise(args.timed_steps)
    times["peak_accelerator_gb"] = peak_accelerator_gb(device)
    times["per_step_s"] = times["timed_s"] / args.timed_steps
    times["dit_s_extrapolated"] = times["per_step_s"] * args.steps
    return latent, times


@contextlib.contextmanager
def variant_setting(name: str, dit: WanDiT, args, device: torch.device):
    """Put the shared model into the state of variant `name` and back."""
    if name == "cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        # cuDNN for self-attention; memory-efficient SDPA stays enabled for the masked cross-attention.
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            yield dit
    elif name == "sage":
        with sage_self_attention():
            yield dit
    elif name == "compile":
        blocks = dit.blocks
        dit.blocks = torch.nn.ModuleList(torch.compile(block) for block in blocks)
        try:
            yield dit
        finally:
            dit.blocks = blocks
    elif name == "offload":
        dit.to("cpu")
        cap = args.offload_cap_gb * GB
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        try:
            with blocks_on_demand(dit, dit.blocks, device, "cpu"):
                yield dit
        finally:
            if device.type == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0, device)
            dit.to(device)
    else:
        yield dit


def skip_reason(name: str, device: torch.device) -> str | None:
    if name == "sage" and not sage_attention_available():
        return "sageattention not installed"
    if name in ("sage", "cudnn", "offload") and device.type != "cuda":
        return "needs a CUDA device"
    return None


def generation(args, device: torch.device, dtype: torch.dtype) -> dict:
    spec = LayerSpec(args.foregrounds)
    cond, uncond = conditioning(args, spec, device, dtype)
    frames = (args.frames - 1) // 4 + 1
    tokens = spec.num_segments * frames * (args.height // 16) * (args.width // 16)
    dit = make_dit(args, device, dtype)
    flops = dit_flops(dit.config, tokens, int(cond["prompt_lens"].sum()))
    floor_s = args.steps * 2 * flops / (args.peak_tflops * 1e12)
    report = {"setting": dict(height=args.height, width=args.width, frames=args.frames, foregrounds=args.foregrounds,
                              output_frames=args.frames * spec.num_segments, visual_tokens=tokens, steps=args.steps,
                              timed_steps=args.timed_steps, guidance=args.guidance, dim=args.dim, layers=args.layers,
                              vae_dim=args.vae_dim, dtype=str(dtype), device=str(device)),
              "flops_per_forward": flops, "flop_floor_s": floor_s, "variants": {}}
    print(f"{tokens} visual tokens, {args.frames * spec.num_segments} output frames; DiT forward {flops:.3g} FLOP; "
          f"floor {floor_s:.1f} s at {args.peak_tflops:g} TFLOP/s; DiT times extrapolated from {args.timed_steps} "
          f"timed steps to {args.steps}", flush=True)
    latent = None
    for name in args.variants:
        reason = skip_reason(name, device)
        if reason:
            report["variants"][name] = {"skipped": reason}
            print(f"{name:>15}: skipped ({reason})", flush=True)
            continue
        model = dit
        try:
            if name == "fp8":  # a model of its own (quantising is not undone); the shared one waits on the host
                dit.to("cpu")
                model = make_dit(args, device, dtype)
                quantize_linears_fp8(model)
            with variant_setting(name, model, args, device) as active:
                out, times = run_dit(active, args, spec, cond, uncond, device, batched=name != "cfg_sequential",
                                     cached=name != "uncached")
        except Exception as err:  # one failing variant (missing kernel, out of memory) must not end the run
            report["variants"][name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{name:>15}: failed: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc(limit=3)
            continue
        finally:
            if name == "fp8":
                model = None
                dit.to(device)
        latent = out if latent is None else latent
        times["floor_fraction"] = floor_s / times["dit_s_extrapolated"]
        report["variants"][name] = times
        peak = times["peak_accelerator_gb"]
        print(f"{name:>15}: {times['per_step_s']:8.3f} s/step  DiT {times['dit_s_extrapolated']:8.1f} s "
              f"(extrapolated)  floor {100 * times['floor_fraction']:5.1f}%  warm-up {times['warmup_s']:.1f} s"
              + (f"  peak {peak:.2f} GB" if peak is not None else ""), flush=True)
    dit = model = active = None  # the decoders run alone on the device
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if latent is not None:
        report["decode"] = decode(args, spec, latent, device, dtype)
        exact = ("sdpa", "uncached", "cfg_sequential", "cudnn")
        best = min((v["dit_s_extrapolated"] for k, v in report["variants"].items()
                    if "dit_s_extrapolated" in v and k in exact), default=None)
        if best is not None:
            total = best + report["decode"]["rgb_decode_s"] + report["decode"]["alpha_decode_s"]
            report["total_exact_s_extrapolated"] = total
            print(f"total (fastest exact DiT variant + decodes): {total:.1f} s extrapolated", flush=True)
    return report


def decode(args, spec: LayerSpec, latent: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict:
    """Every RGB layer through the VAE, every matte through the alpha VAE; one latent frame at a time."""
    vae, mask_vae = make_vaes(args, device, dtype)
    times: dict = {}
    reset_peak(device)
    parts = spec.split(latent)
    rgb = {n: p for n, p in parts.items() if spec.kind(n) != "mask"}
    mattes = {n: p for n, p in parts.items() if spec.kind(n) == "mask"}
    layers: dict = {}
    with torch.no_grad():
        for name, part in parts.items():
            with phase(device, layers, name):
                (mask_vae if spec.kind(name) == "mask" else vae).decode(part).cpu()
    times["layer_s"] = layers
    times["rgb_decode_s"] = sum(layers[n] for n in rgb)
    times["alpha_decode_s"] = sum(layers[n] for n in mattes)
    times["peak_accelerator_gb"] = peak_accelerator_gb(device)
    peak = times["peak_accelerator_gb"]
    print(f"{'VAE decode':>15}: {times['rgb_decode_s']:8.2f} s for {len(rgb)} RGB layers, "
          f"{times['alpha_decode_s']:.2f} s for {len(mattes)} mattes" + (f"  peak {peak:.2f} GB" if peak else ""),
          flush=True)
    del vae, mask_vae
    return times


# ---------------------------------------------------------------------------------------------------- training


def training(args, device: torch.device) -> dict:
    """Stage-2 steps: LoRA on the DiT's linears + LayerAdaLN, gradient checkpointing, bf16, flow-matching loss."""
    from train.config import TrainConfig
    from train.dit_task import add_lora
    from train.losses import flow_matching_loss

    cfg = TrainConfig()
    results = {}
    for size in args.train_sizes:
        height, width, frames = (int(v) for v in size.split("x"))
        dit = make_dit(args, device, torch.bfloat16)
        dit.gradient_checkpointing = True
        module = add_lora(dit, args.lora_rank, args.lora_rank, cfg.lora_targets).train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        spec = LayerSpec(1)
        cond, _ = conditioning(args, spec, device, torch.bfloat16)
        shape = (1, 16, spec.num_segments * ((frames - 1) // 4 + 1), height // 8, width // 8)
        g = torch.Generator().manual_seed(3)
        x0, noise = torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
        sigma = torch.tensor([0.6], device=device)

        def step() -> torch.Tensor:
            z_t = (1 - sigma) * x0 + sigma * noise
            velocity = module(z_t, sigma * 1000, cond["context"], layer_spec=spec, prompt_lens=cond["prompt_lens"])
            loss = flow_matching_loss(velocity, x0, noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        times: dict = {"trainable_parameters": sum(p.numel() for p in params)}
        try:
            with phase(device, times, "warmup_s"):
                step()
            reset_peak(device)
            with phase(device, times, "timed_s"):
                for _ in range(args.train_steps):
                    step()
        except Exception as err:
            results[size] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{'train ' + size:>15}: failed: {type(err).__name__}: {err}", flush=True)
            continue
        finally:
            del module, dit, optimizer, params
            if device.type == "cuda":
                torch.cuda.empty_cache()
        times["per_step_s"] = times["timed_s"] / args.train_steps
        times["peak_accelerator_gb"] = peak_accelerator_gb(device)
        results[size] = times
        peak = times["peak_accelerator_gb"]
        print(f"{'train ' + size:>15}: {times['per_step_s']:8.3f} s/step (LoRA rank {args.lora_rank}, gradient "
              f"checkpointing, bf16)" + (f"  peak {peak:.2f} GB" if peak is not None else ""), flush=True)
    return results


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=672)
    p.add_argument("--frames", type=int, default=41)
    p.add_argument("--foregrounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="the schedule's length (what times are extrapolated to)")
    p.add_argument("--timed-steps", type=int, default=5, help="steps timed per variant, after two warm-up steps")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--heads", type=int, default=None, help="default: dim / 128, Wan's head width")
    p.add_argument("--ffn-dim", type=int, default=None, help="default: 8960 at dim 1536, else 6 x dim")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--vae-dim", type=int, default=96, help="VAE base width (Wan2.1: 96)")
    p.add_argument("--prompt-tokens", type=int, default=120, help="full prompt tokens; each other prompt half")
    p.add_argument("--negative-tokens", type=int, default=100, help="negative prompt tokens, once per prompt slot")
    p.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v], default=list(VARIANTS),
                   help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--offload-cap-gb", type=float, default=8.0, help="accelerator memory cap of the offload variant")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak (H200 ~790)")
    p.add_argument("--train-sizes", type=lambda s: [v for v in s.split(",") if v], default=["192x336x9", "384x672x41"],
                   help="HxWxF of the stage-2 training steps; empty to skip")
    p.add_argument("--train-steps", type=int, default=2, help="timed training steps per size, after one warm-up")
    p.add_argument("--lora-rank", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", default="bench_generate.json", help="where the JSON report goes")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.heads = args.heads or max(1, args.dim // 128)
    args.ffn_dim = args.ffn_dim or (8960 if args.dim == 1536 else 6 * args.dim)
    if not 1 <= args.timed_steps <= args.steps:
        p.error(f"--timed-steps must be between 1 and --steps ({args.steps}), got {args.timed_steps}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    with torch.no_grad():
        report = {"device": name, "torch": torch.__version__, "generation": generation(args, device, dtype)}
    report["training"] = training(args, device) if args.train_sizes else {}
    report["peak_host_gb"] = peak_host_gb()
    print(f"peak host memory: {report['peak_host_gb']:.2f} GB", flush=True)
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
