"""Loading a DiT holds one copy of the weights, not two (peak RSS of a fresh process)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from layert2v_core.checkpoints import save_dit
from layert2v_core.dit import DiTConfig, WanDiT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak-RSS reset needs Linux /proc")
def test_load_peak_memory_is_one_model(tmp_path):
    cfg = DiTConfig(dim=512, num_heads=4, ffn_dim=2048, num_layers=6, text_dim=1024, freq_dim=256)
    with torch.device("meta"):
        shapes = WanDiT(cfg).state_dict()
    model_bytes = sum(v.numel() * 4 for v in shapes.values())
    path = tmp_path / "dit.safetensors"
    save_dit(WanDiT(cfg), path)
    warm = tmp_path / "warm.safetensors"
    save_dit(WanDiT(DiTConfig(dim=32, num_heads=1, ffn_dim=64, num_layers=1, text_dim=32, freq_dim=32)), warm)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import torch
        from layert2v_core import load_dit

        def rss(field):
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1]) * 1024

        # A first load pages in what loading touches once (CUDA builds of torch bring in ~140 MB of libraries
        # lazily), so that the measured load below counts weights only.
        load_dit({str(warm)!r})
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
        before = rss("VmRSS:")
        model = load_dit({str(path)!r})
        for tensor in model.state_dict().values():  # weights read lazily from the file count once touched
            tensor.sum()
        print(rss("VmHWM:") - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_growth = int(out.stdout.strip().splitlines()[-1])
    # One model plus the largest single tensor and allocator slack; two copies would be >= 2x.
    print(f"peak growth {peak_growth / model_bytes:.2f}x model size")
    assert peak_growth < 1.35 * model_bytes, (peak_growth, model_bytes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_stream_is_token_major_and_contiguous(dtype):
    # A transposed stream would be copied again by every LayerNorm of every block (3 per block, each forward).
    cfg = DiTConfig(dim=64, num_heads=1, ffn_dim=128, num_layers=2, text_dim=32, freq_dim=32)
    model = WanDiT(cfg).to(dtype).eval()
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda _, args: seen.append((args[0].is_contiguous(), args[0].dtype)))
    with torch.no_grad():
        model(torch.randn(1, 16, 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 8, 32))
    assert seen == [(True, torch.float32)] * cfg.num_layers
