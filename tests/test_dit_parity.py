"""Our Wan2.1 DiT against diffusers' WanTransformer3DModel (independent implementation), all key layouts.

Tolerance: max |ours - ref| <= 4e-6 * max |ref| in float32 (measured 1.8e-6 on every layout).
"""
import re

import pytest
import torch
from safetensors.torch import save_file

from layert2v_core import load_dit
from layert2v_core.weights import CheckpointError

# diffusers is the test-only reference (requirements-dev.txt): without it this module fails, it is not skipped.
import diffusers  # noqa: E402

CONFIGS = {
    # dim 256 = 2 heads of 128, the Wan head width, so heads can be inferred from the weights alone.
    "two_heads": dict(num_attention_heads=2, attention_head_dim=128, text_dim=64, ffn_dim=512, num_layers=2,
                      freq_dim=256),
    "three_heads": dict(num_attention_heads=3, attention_head_dim=128, text_dim=48, ffn_dim=640, num_layers=3,
                        freq_dim=64),
}
TOL = 4e-6  # about twice the measured 1.8e-6 (two_heads) / 1.4e-6 (three_heads)


def diffusers_to_original(state: dict) -> dict:
    """Independent re-statement of the diffusers -> original Wan renames (DESIGN.md section 3)."""
    fixed = {
        "scale_shift_table": "head.modulation", "proj_out.weight": "head.head.weight",
        "proj_out.bias": "head.head.bias",
    }
    out = {}
    for k, v in state.items():
        if k in fixed:
            out[fixed[k]] = v
            continue
        n = k
        for a, b in [("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
                     ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
                     ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
                     ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
                     ("condition_embedder.time_proj", "time_projection.1"),
                     (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."), (".to_out.0.", ".o."),
                     (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".ffn.net.0.proj.", ".ffn.0."),
                     (".ffn.net.2.", ".ffn.2."), (".scale_shift_table", ".modulation"), (".norm2.", ".norm3.")]:
            n = n.replace(a, b)
        out[n] = v
    return out


def make_reference(name: str):
    torch.manual_seed(1)
    ref = diffusers.WanTransformer3DModel(**CONFIGS[name]).eval()
    with torch.no_grad():  # diffusers zero-inits nothing we care about; perturb biases so every term is tested
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return ref


def inputs(ref, frames=3, height=8, width=12, batch=2, text_rows=512):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    t = torch.tensor([999.0, 321.5])[:batch]
    ctx = torch.randn(batch, text_rows, ref.config.text_dim, generator=g)
    return x, t, ctx


def write_layout(ref, layout: str, folder):
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if layout == "original":
        path = folder / "wan_original.safetensors"
        save_file(diffusers_to_original(state), str(path))
    elif layout == "comfyui":
        path = folder / "wan_comfy.safetensors"
        save_file({"model.diffusion_model." + k: v for k, v in diffusers_to_original(state).items()}, str(path))
    elif layout == "diffusers_file":
        path = folder / "diffusion_pytorch_model.safetensors"
        save_file(state, str(path))
    elif layout == "diffusers_sharded":
        path = folder / "transformer"
        ref.save_pretrained(str(path), max_shard_size="200KB")
        assert (path / "diffusion_pytorch_model.safetensors.index.json").exists()
    return path


def max_rel_err(out, ref_out):
    return ((out - ref_out).abs().max() / ref_out.abs().max()).item()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("layout", ["original", "comfyui", "diffusers_file", "diffusers_sharded"])
def test_matches_diffusers(tmp_path, name, layout):
    ref = make_reference(name)
    x, t, ctx = inputs(ref)
    with torch.no_grad():
        expected = ref(x, t, ctx, return_dict=False)[0]
        model = load_dit(write_layout(ref, layout, tmp_path))
        got = model(x, t, ctx)
    assert got.shape == expected.shape
    assert max_rel_err(got, expected) <= TOL


def test_config_inferred_from_weights(tmp_path):
    ref = make_reference("three_heads")
    model = load_dit(write_layout(ref, "comfyui", tmp_path))
    cfg = model.config
    assert (cfg.dim, cfg.num_heads, cfg.num_layers, cfg.ffn_dim, cfg.text_dim, cfg.freq_dim) == (384, 3, 3, 640, 48, 64)


def test_head_width_from_diffusers_config(tmp_path):
    """A diffusers folder's config.json gives the head count when heads are not 128 wide."""
    torch.manual_seed(3)
    ref = diffusers.WanTransformer3DModel(num_attention_heads=4, attention_head_dim=32, text_dim=32, ffn_dim=256,
                                          num_layers=1, freq_dim=32).eval()
    x, t, ctx = inputs(ref, text_rows=512)
    path = tmp_path / "transformer"
    ref.save_pretrained(str(path))
    with torch.no_grad():
        got = load_dit(path)(x, t, ctx)
        expected = ref(x, t, ctx, return_dict=False)[0]
    assert max_rel_err(got, expected) <= TOL


@pytest.mark.parametrize("scaled", [False, True])
def test_fp8_weights_compute_in_requested_dtype(tmp_path, scaled):
    """fp8 files (plain and with per-weight scales) load dequantised; compare with a reference holding the
    same fp8-rounded values in float32."""
    ref = make_reference("two_heads")
    state = diffusers_to_original({k: v.contiguous() for k, v in ref.state_dict().items()})
    quantised, rounded = {}, {}
    for k, v in state.items():
        if k.endswith(".weight") and v.dim() == 2:
            scale = v.abs().max() / 448.0 if scaled else torch.tensor(1.0)
            q = (v / scale).to(torch.float8_e4m3fn)
            quantised[k] = q
            if scaled:
                quantised[k[:-len(".weight")] + ".scale_weight"] = scale.reshape(1)
            rounded[k] = q.float() * scale
        else:
            quantised[k], rounded[k] = v, v
    if scaled:
        quantised["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "wan_fp8.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in quantised.items()}, str(path))
    # The reference gets the dequantised values through its own (diffusers) names.
    inverse = dict(zip(diffusers_to_original(dict.fromkeys(ref.state_dict())), ref.state_dict()))
    ref.load_state_dict({inverse[k]: v for k, v in rounded.items()})
    x, t, ctx = inputs(ref)
    with torch.no_grad():
        model = load_dit(path, dtype=torch.float32)
        assert model.blocks[0].self_attn.q.weight.dtype == torch.float32
        got = model(x, t, ctx)
        expected = ref(x, t, ctx, return_dict=False)[0]
    assert max_rel_err(got, expected) <= TOL


def test_partial_file_names_format_and_keys(tmp_path):
    ref = make_reference("two_heads")
    state = diffusers_to_original({k: v.contiguous() for k, v in ref.state_dict().items()})
    del state["blocks.1.ffn.2.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_dit(path)
    msg = str(err.value)
    assert "original" in msg and "blocks.1.ffn.2.weight" in msg and "blocks.0.extra.weight" in msg


def test_not_a_wan_dit(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match=re.escape("not a Wan2.1 DiT")):
        load_dit(path)


def test_bf16_load_keeps_modulation_in_float32(tmp_path):
    ref = make_reference("two_heads")
    model = load_dit(write_layout(ref, "original", tmp_path), dtype=torch.bfloat16)
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert model.blocks[0].modulation.dtype == torch.float32
    # Kept at the file's float32 values, never rounded through bf16 on the way in.
    assert torch.equal(model.blocks[0].modulation, ref.blocks[0].scale_shift_table)
    assert torch.equal(model.head.modulation, ref.scale_shift_table)
    x, t, ctx = inputs(ref)
    with torch.no_grad():
        got = model(x, t, ctx)
        expected = ref(x, t, ctx, return_dict=False)[0]
    assert torch.isfinite(got).all()
    assert max_rel_err(got, expected) < 0.05  # bf16 weights: a few percent at most
