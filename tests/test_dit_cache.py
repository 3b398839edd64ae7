"""What a generation computes once: the forward cache (context K/V, routing bias, LayerAdaLN rows), the RoPE
rotation of a grid, and fp8 weight storage.

The cached forward runs the same operations on the same values as the uncached one, so the two must be bitwise
equal (torch.equal); fp8 weights round every weight to 3 mantissa bits, tolerance stated at each test.
"""
import pytest
import torch
from torch import nn

from layert2v_core import LayerSpec
from layert2v_core.dit import DiTConfig, WanDiT, apply_rope, rope_for_grid
from layert2v_core.fp8 import Float8Linear, quantize_linears_fp8


def tiny(num_layers=2) -> WanDiT:
    torch.manual_seed(0)
    cfg = DiTConfig(dim=64, num_heads=2, ffn_dim=128, num_layers=num_layers, text_dim=32, freq_dim=32, text_len=24)
    model = WanDiT(cfg).eval()
    with torch.no_grad():  # non-zero LayerAdaLN rows, so a wrong cached row would show
        model.layer_adaln.layer_modulation.normal_(0, 0.1)
    return model


def steps(spec: LayerSpec | None, batch: int = 2, count: int = 3):
    g = torch.Generator().manual_seed(3)
    frames = spec.num_segments if spec else 2
    for i in range(count):
        yield torch.randn(batch, 16, frames, 4, 6, generator=g), torch.full((batch,), 900.0 - 300 * i)


def calls(module: nn.Module) -> list:
    seen = []
    module.register_forward_hook(lambda *_: seen.append(1))
    return seen


@pytest.mark.parametrize("layered", [True, False])
def test_cached_forward_equals_uncached_and_projects_the_context_once(layered):
    model = tiny()
    spec = LayerSpec(1) if layered else None
    ctx = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(4))
    lens = torch.tensor([[6, 5, 7], [4, 9, 3]]) if layered else None
    text_calls, key_calls = calls(model.text_embedding), calls(model.blocks[1].cross_attn.k)
    cache = {}
    with torch.no_grad():
        for x, t in steps(spec):
            plain = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
            before = (len(text_calls), len(key_calls))
            cached = model(x, t, ctx, layer_spec=spec, prompt_lens=lens, cache=cache)
            assert torch.equal(cached, plain)
            uses = (len(text_calls) - before[0], len(key_calls) - before[1])
            assert uses == ((1, 1) if len(text_calls) == 2 else (0, 0))  # only the first cached forward projects


def test_a_cache_refuses_another_conditioning_and_autograd():
    model = tiny(num_layers=1)
    spec = LayerSpec(1)
    ctx, lens = torch.randn(1, 24, 32), torch.tensor([[8, 8, 8]])
    x, t = next(steps(spec, batch=1))
    cache = {}
    with torch.no_grad():
        model(x, t, ctx, layer_spec=spec, prompt_lens=lens, cache=cache)
        with pytest.raises(ValueError, match="another context"):
            model(x, t, ctx.clone(), layer_spec=spec, prompt_lens=lens, cache=cache)
        with pytest.raises(ValueError, match="another context"):
            model(x, t, ctx, layer_spec=LayerSpec(1, "official"), prompt_lens=lens, cache=cache)
    with pytest.raises(ValueError, match="for inference"):
        model(x, t, ctx, layer_spec=spec, prompt_lens=lens, cache={})


def test_rope_rotation_is_built_once_per_grid_and_rotates_pairs():
    model = tiny(num_layers=1)
    first = model.rope((2, 3, 4), None, "cpu")
    assert model.rope((2, 3, 4), None, "cpu") is first
    other = model.rope((1, 3, 4), None, "cpu")
    assert other.shape[0] == 12 and other is not first
    # Independent statement of Wan's pair rotation: (a, b) -> (a cos - b sin, a sin + b cos).
    cos, sin = rope_for_grid(model._rope, 2, 3, 4, "cpu")
    x = torch.randn(1, 24, 2, 32)
    a, b = x[..., 0::2], x[..., 1::2]
    expected = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    assert (apply_rope(x, first) - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_rope_rotation_follows_the_4d_layer_axis_of_layered_forwards():
    torch.manual_seed(0)
    model = WanDiT(DiTConfig(dim=64, num_heads=1, ffn_dim=128, num_layers=1, text_dim=32, freq_dim=32, text_len=24,
                             rope="4d", rope_dims=(8, 20, 18, 18)))
    grid, spec = (4, 2, 3), LayerSpec(1)
    layered = model.rope(grid, spec, "cpu")
    assert torch.equal(layered, torch.complex(*model._rope_for(grid, spec, "cpu")))
    plain = model.rope(grid, None, "cpu")
    assert not torch.equal(plain, layered)
    assert torch.equal(plain, torch.complex(*model._rope_for(grid, None, "cpu")))


def test_fp8_linear_matches_its_dequantised_weight_and_the_original_within_fp8_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    fp8 = Float8Linear(linear)
    assert fp8.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(7, 96)
    with torch.no_grad():
        reference = nn.functional.linear(x, fp8.dequantized(torch.float32), linear.bias)
        assert (fp8(x) - reference).abs().max() <= 1e-6 * reference.abs().max()
        # e4m3 keeps 3 mantissa bits: each weight within 2^-4 relative; the output error averages down below 5%.
        exact = linear(x)
        assert (fp8(x) - exact).norm() <= 0.05 * exact.norm()


def test_fp8_dit_blocks_store_a_quarter_of_float32_and_stay_close():
    model = tiny()
    spec = LayerSpec(1)
    ctx, lens = torch.randn(1, 24, 32), torch.tensor([[8, 8, 8]])
    x, t = next(steps(spec, batch=1))
    with torch.no_grad():
        exact = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        before = sum(p.numel() * p.element_size() for p in model.blocks.parameters())
        replaced = quantize_linears_fp8(model)
        after = sum(p.numel() * p.element_size() for p in model.blocks.parameters())
        out = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
    assert replaced == 2 * 10  # q, k, v, o of both attentions and the two FFN layers, in each of 2 blocks
    assert after < 0.3 * before
    assert (out - exact).norm() <= 0.05 * exact.norm()
