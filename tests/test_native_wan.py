"""The native-path pieces (layert2v_core.native_wan) against plain references built from LayerSpec's dense forms.

Tolerances: fp32, 1e-5 relative for attention (SDPA vs an explicit softmax), exact for table look-ups.
The whole native path inside a real ComfyUI server is checked by tests/comfy_native_parity.py.
"""
import pytest
import torch

from layert2v_core.checkpoints import LAYER_ADALN_KEY, load_adapter, load_dit, save_dit_adapter
from layert2v_core.dit import WanDiT
from layert2v_core.layers import LayerSpec
from layert2v_core.native_wan import HOST_PREFIX, LayeredWan, layer_modulation, lora_state_dict
from nodes.native import native_conditioning
from train.tiny_models import tiny_dit_config


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("native")
    torch.manual_seed(0)
    dit = WanDiT(tiny_dit_config(num_foregrounds=2))
    dit.layer_adaln.layer_modulation.data.normal_()
    base = folder / "dit.safetensors"
    from layert2v_core.checkpoints import save_dit
    save_dit(dit, base)
    lora = {"blocks.0.self_attn.q": (torch.randn(3, 64), torch.randn(64, 3)),
            "blocks.1.ffn.0": (torch.randn(3, 64), torch.randn(128, 3))}
    save_dit_adapter(dit, lora, folder / "adapter.safetensors", lora_alpha=6.0)
    return base, folder / "adapter.safetensors"


def test_lora_as_generic_lora_merges_like_our_loader(adapter_files):
    base, adapter_path = adapter_files
    adapter = load_adapter(adapter_path)
    lora = lora_state_dict(adapter)
    assert not any(LAYER_ADALN_KEY in k for k in lora)
    plain, merged = load_dit(base).state_dict(), load_dit(base, adapter=adapter_path).state_dict()
    for module in ("blocks.0.self_attn.q", "blocks.1.ffn.0"):
        down, up = lora[f"{HOST_PREFIX}{module}.lora_A.weight"], lora[f"{HOST_PREFIX}{module}.lora_B.weight"]
        alpha = lora[f"{HOST_PREFIX}{module}.alpha"].item()
        # A generic LoRA loader's rule: W + (alpha / rank) * up @ down.
        patched = plain[f"{module}.weight"] + alpha / down.shape[0] * up @ down
        torch.testing.assert_close(patched, merged[f"{module}.weight"], rtol=1e-6, atol=1e-6)


def test_layer_modulation_checks_the_width(adapter_files):
    adapter = load_adapter(adapter_files[1])
    assert layer_modulation(adapter, 64).shape == (6, 6, 64)
    with pytest.raises(ValueError, match="64-wide Wan model.*this model is 128 wide"):
        layer_modulation(adapter, 128)


def _call(num_foregrounds=2, frames=6, tokens=6 * 4, dim=8, rows=None, batch=2, policy="paper"):
    torch.manual_seed(1)
    table = torch.randn(2 + 2 * num_foregrounds, 6, dim)
    spec = LayerSpec(num_foregrounds, policy)
    lens = torch.tensor([[3, 2, 1, 4], [1, 1, 2, 2]])[:batch, :spec.num_prompts]
    rows = rows or int(lens.sum(-1).max()) + 2
    context = torch.randn(batch, rows, dim)
    call, context = LayeredWan(table, policy).prepare(lens, context, frames, tokens)
    return call, context, table, spec, lens


@pytest.mark.parametrize("policy", ["paper", "official"])
def test_routed_cross_attention_equals_the_dense_token_mask(policy):
    call, context, _, spec, lens = _call(policy=policy)
    heads, head_dim, tokens = 2, 4, call.tokens
    q = torch.randn(2, tokens, heads * head_dim)
    k, v = torch.randn(2, context.shape[1], heads * head_dim), torch.randn(2, context.shape[1], heads * head_dim)
    out = call.cross_attention(q, k, v, heads)
    visible = spec.token_routing_mask(lens, context.shape[1], tokens // spec.num_segments)  # [B, tokens, rows]
    qh, kh, vh = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2)) / head_dim ** 0.5
    weights = scores.masked_fill(~visible[:, None], float("-inf")).softmax(-1)
    expected = (weights @ vh).transpose(1, 2).flatten(2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_segment_modulation_is_each_tokens_category_row():
    call, _, table, spec, _ = _call()
    e0 = torch.randn(2, 1, 6, 8)
    per_segment = call.modulation(e0)
    assert call.modulation(e0) is per_segment  # once per forward, shared by every block
    # What a Wan block makes of it: each row spread over its run of tokens.
    per_token = per_segment.repeat_interleave(call.tokens // spec.num_segments, dim=1)
    categories = spec.token_categories(1, 1, call.tokens // spec.num_segments)
    torch.testing.assert_close(per_token, e0 + table[categories].unsqueeze(0), rtol=0, atol=0)


def test_attention_is_told_apart_by_length_and_a_clash_gets_a_hidden_row():
    call, context, *_ = _call(rows=24, tokens=24)
    assert context.shape[1] == 25 and call.context_rows == 25
    assert call.bias[:, :, -1].eq(float("-inf")).all()
    q = torch.zeros(2, 24, 8)
    assert call.is_cross_attention(q, context) and not call.is_cross_attention(q, q)


def test_bad_layouts_are_named():
    with pytest.raises(ValueError, match="4 rows, enough for 1 foreground.*has 2"):
        LayeredWan(torch.zeros(4, 6, 8), "paper").prepare(torch.ones(1, 4), torch.zeros(1, 5, 8), 6, 24)
    with pytest.raises(ValueError, match="do not divide by 6"):
        LayeredWan(torch.zeros(6, 6, 8), "paper").prepare(torch.ones(1, 4), torch.zeros(1, 5, 8), 5, 20)


def test_native_conditioning_carries_the_prompt_lengths():
    (context, extra), = native_conditioning(torch.zeros(1, 7, 4), torch.tensor([[3, 2, 2]]))
    assert context.shape == (1, 7, 4)
    assert extra["model_conds"]["layert2v_prompt_lens"].tolist() == [[3, 2, 2]]


def test_alpha_vae_node_builds_the_pair_from_a_loaded_vae(comfy_folders):
    """LayerT2V Alpha VAE reads ComfyUI's loaded VAE (its first_stage_model holds Wan's original key layout)."""
    from types import SimpleNamespace

    from layert2v_core.vae import load_vae
    from nodes.native import LayerT2VAlphaVAE
    from workflows.build import ALPHA_VAE, VAE
    from_file = load_vae(comfy_folders[0] / "vae" / VAE)
    loaded = SimpleNamespace(first_stage_model=from_file)  # what ComfyUI's VAE object carries
    pair = LayerT2VAlphaVAE().load(loaded, ALPHA_VAE)[0]
    latent = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pair.vae.decode(latent), from_file.decode(latent), rtol=0, atol=0)
    assert pair.vae is not from_file and pair.tile is None
    with pytest.raises(ValueError, match="not a ComfyUI VAE"):
        LayerT2VAlphaVAE().load(object(), ALPHA_VAE)
