"""Behaviour of the layered forward: LayerAdaLN, routing, checkpointing, and LayerT2V adapters."""
import pytest
import torch

from layert2v_core import LayerSpec, load_dit
from safetensors import safe_open

from layert2v_core.checkpoints import save_dit, save_dit_adapter
from layert2v_core.dit import DiTConfig, WanDiT
from layert2v_core.weights import CheckpointError, save_weights_atomic


def tiny(num_layers=2, text_len=24, **kw) -> WanDiT:
    torch.manual_seed(0)
    cfg = DiTConfig(dim=64, num_heads=2, ffn_dim=128, num_layers=num_layers, text_dim=32, freq_dim=32,
                    text_len=text_len, **kw)
    return WanDiT(cfg).eval()


def sample(spec: LayerSpec, batch=1, frames=1, size=4, lens=(8, 8, 8)):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, 16, spec.num_segments * frames, size, size, generator=g)
    t = torch.full((batch,), 500.0)
    ctx = torch.randn(batch, 24, 32, generator=g)
    return x, t, ctx, torch.tensor([list(lens)] * batch)


def tokens_of(spec: LayerSpec, out: torch.Tensor, name: str) -> torch.Tensor:
    return spec.split(out)[name]


def test_zero_adaln_and_full_visibility_equals_plain():
    model = tiny()
    spec = LayerSpec(1, "shared")
    x, t, ctx, lens = sample(spec, batch=2)  # prompt lengths fill all 24 rows: nothing is padding
    with torch.no_grad():
        plain = model(x, t, ctx)
        layered = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
    assert (layered - plain).abs().max() <= 1e-6 * plain.abs().max()


@pytest.mark.parametrize("policy", ["paper", "official"])
def test_bg_prompt_does_not_reach_foreground_tokens(policy):
    """One block: cross-attention is the only way a prompt enters, so fg/mask tokens must ignore the bg prompt."""
    model = tiny(num_layers=1)
    spec = LayerSpec(1, policy)
    x, t, ctx, lens = sample(spec)
    other = ctx.clone()
    other[:, 16:24] = torch.randn(1, 8, 32)  # rows 16..23 are the bg prompt ([full | fg1 | bg])
    with torch.no_grad():
        a = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        b = model(x, t, other, layer_spec=spec, prompt_lens=lens)
    for name in ("fg1", "mask1"):
        assert torch.equal(tokens_of(spec, a, name), tokens_of(spec, b, name))
    for name in ("full", "bg"):
        assert not torch.allclose(tokens_of(spec, a, name), tokens_of(spec, b, name))


def test_full_prompt_reaches_layers_only_under_official_policy():
    model = tiny(num_layers=1)
    x, t, ctx, lens = sample(LayerSpec(1))
    other = ctx.clone()
    other[:, 0:8] = torch.randn(1, 8, 32)  # the full prompt
    for policy, reaches in (("paper", False), ("official", True)):
        spec = LayerSpec(1, policy)
        with torch.no_grad():
            a = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
            b = model(x, t, other, layer_spec=spec, prompt_lens=lens)
        changed = not torch.equal(tokens_of(spec, a, "bg"), tokens_of(spec, b, "bg"))
        assert changed == reaches


def test_cross_attention_routing_in_every_block_of_a_deep_model():
    model = tiny(num_layers=3)
    spec = LayerSpec(2)
    lens = torch.tensor([[5, 5, 6, 8]])  # [full | fg1 | fg2 | bg]
    h = torch.randn(1, spec.num_segments * 6, 64)
    ctx = model.text_embedding(torch.randn(1, 24, 32))
    ctx2 = ctx.clone()
    ctx2[:, 5:10] = torch.randn(1, 5, 64)  # change only fg1's prompt
    bias = spec.attention_bias(lens, 24)
    with torch.no_grad():
        for block in model.blocks:
            a = block.cross_attn.cross_attention(h, ctx, bias).unflatten(1, (spec.num_segments, -1))
            b = block.cross_attn.cross_attention(h, ctx2, bias).unflatten(1, (spec.num_segments, -1))
            same = [torch.equal(a[:, s], b[:, s]) for s in range(spec.num_segments)]
            assert same == [False, True, False, False, True, True]  # full, bg, fg1, mask1, fg2, mask2


def test_layer_adaln_row_modulates_its_own_segment():
    model = tiny(num_layers=1)
    with torch.no_grad():  # silence self-attention so tokens cannot mix; then only the bg segment may change
        model.blocks[0].self_attn.o.weight.zero_()
        model.blocks[0].self_attn.o.bias.zero_()
    spec = LayerSpec(1)
    x, t, ctx, lens = sample(spec)
    with torch.no_grad():
        before = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        model.layer_adaln.layer_modulation[spec.categories[spec.segment_index("bg")]] = 0.5
        after = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
    for name in spec.segments:
        assert torch.equal(tokens_of(spec, before, name), tokens_of(spec, after, name)) == (name != "bg")


def test_gradient_checkpointing_gives_same_values_and_gradients():
    spec = LayerSpec(1)
    x, t, ctx, lens = sample(spec)
    grads = []
    for flag in (False, True):
        model = tiny().train().requires_grad_(True)
        model.gradient_checkpointing = flag
        out = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        out.square().mean().backward()
        grads.append((out.detach(), model.blocks[0].self_attn.q.weight.grad.clone(),
                      model.layer_adaln.layer_modulation.grad.clone()))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_layered_input_errors_are_clear():
    model = tiny()
    spec = LayerSpec(1)
    x, t, ctx, lens = sample(spec)
    with pytest.raises(ValueError, match="do not divide by 4"):
        model(x[:, :, :3], t, ctx, layer_spec=spec, prompt_lens=lens)
    with pytest.raises(ValueError, match="needs prompt_lens"):
        model(x, t, ctx, layer_spec=spec)
    with pytest.raises(ValueError, match="enough for 1 foreground"):
        model.layer_spec(2)


def test_extend_layer_categories_copies_single_foreground_rows():
    model = tiny()
    with torch.no_grad():
        model.layer_adaln.layer_modulation.copy_(torch.randn(4, 6, 64))
    old = model.layer_adaln.layer_modulation.detach().clone()
    model.extend_layer_categories(3)
    new = model.layer_adaln.layer_modulation
    assert new.shape == (8, 6, 64) and model.config.num_layer_categories == 8
    for row, src in enumerate((0, 1, 2, 3, 2, 3, 2, 3)):
        assert torch.equal(new[row], old[src])
    assert model.layer_spec(3).num_foregrounds == 3


def _base_file(model: WanDiT, path):
    """A plain Wan checkpoint (no LayerAdaLN) carrying the tiny config the weights cannot tell (heads, text_len)."""
    save_dit(model, path)
    with safe_open(str(path), "pt") as h:
        meta, tensors = h.metadata(), {k: h.get_tensor(k) for k in h.keys() if not k.startswith("layer_adaln")}
    save_weights_atomic(tensors, path, meta)
    return path


def test_official_peft_adapter_merges_to_w_plus_scaled_b_a(tmp_path):
    """The official adapter is a PEFT save_pretrained folder. Loaded, every targeted weight is W + (lora_alpha / r)
    B A with A and B read back from the saved file, the LayerAdaLN table is the saved one, and nothing else moves."""
    import peft
    from safetensors.torch import load_file
    model = tiny(text_len=24)
    base = _base_file(model, tmp_path / "base.safetensors")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    targets = ["self_attn.q", "cross_attn.v", "ffn.0", "head.head", "time_projection.1"]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=["layer_adaln"],
                             lora_dropout=0.0)
    wrapped = peft.get_peft_model(model, config)
    table = torch.randn(4, 6, 64) * 0.1
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
            elif "layer_modulation" in name:
                p.copy_(table)
    wrapped.save_pretrained(str(tmp_path / "adapter"))
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    loaded = load_dit(base, adapter=tmp_path / "adapter")
    merged = set()
    for key, down in saved.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        up = saved[key.replace(".lora_A.", ".lora_B.")]
        expected = original[f"{module}.weight"] + (8 / 4) * up @ down
        torch.testing.assert_close(loaded.get_submodule(module).weight, expected, atol=1e-6, rtol=0)
        merged.add(f"{module}.weight")
    assert len(merged) == 2 * 3 + 2  # three block modules in each of 2 blocks, head and time projection
    for name, value in loaded.state_dict().items():
        if name not in merged and name != "layer_adaln.layer_modulation":
            assert torch.equal(value, original[name]), name
    assert loaded.config.routing_policy == "official"
    assert torch.equal(loaded.layer_adaln.layer_modulation, table)


def test_own_adapter_roundtrip(tmp_path):
    model = tiny()
    base = _base_file(model, tmp_path / "base.safetensors")
    lora = {"blocks.0.self_attn.k": (torch.randn(3, 64) * 0.1, torch.randn(64, 3) * 0.1),
            "blocks.1.ffn.2": (torch.randn(3, 128) * 0.1, torch.randn(64, 3) * 0.1)}
    with torch.no_grad():
        model.layer_adaln.layer_modulation.normal_()
    save_dit_adapter(model, lora, tmp_path / "adapter.safetensors", lora_alpha=6.0)
    loaded = load_dit(base, adapter=tmp_path / "adapter.safetensors")
    with torch.no_grad():
        for module, (down, up) in lora.items():
            base_w = model.get_submodule(module).weight
            assert torch.allclose(loaded.get_submodule(module).weight, base_w + 2.0 * up @ down, atol=1e-6)
    assert torch.equal(loaded.layer_adaln.layer_modulation, model.layer_adaln.layer_modulation)
    plain = load_dit(base)
    spec = LayerSpec(1)
    x, t, ctx, lens = sample(spec)
    with torch.no_grad():
        assert not torch.allclose(plain(x, t, ctx, layer_spec=spec, prompt_lens=lens),
                                  loaded(x, t, ctx, layer_spec=spec, prompt_lens=lens))


def test_a_merged_layert2v_checkpoint_gives_its_layer_parts_as_an_adapter(tmp_path):
    """A Wan loader (ComfyUI's) reads a merged checkpoint's Wan weights; the adapter slot takes what they lack."""
    from layert2v_core.checkpoints import load_adapter
    model = tiny()
    with torch.no_grad():
        model.layer_adaln.layer_modulation.normal_(0, 0.3)
    model.config.routing_policy = "official"
    save_dit(model, tmp_path / "merged.safetensors")
    adapter = load_adapter(tmp_path / "merged.safetensors")
    assert adapter.lora == {} and list(adapter.tensors) == ["layer_adaln.layer_modulation"]
    assert adapter.routing_policy == "official" and adapter.settings["rope"] == "3d"
    base = _base_file(model, tmp_path / "base.safetensors")  # the same weights without the LayerT2V table
    rebuilt, merged = load_dit(base, adapter=tmp_path / "merged.safetensors"), load_dit(tmp_path / "merged.safetensors")
    spec = LayerSpec(1)
    x, t, ctx, lens = sample(spec)
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t, ctx, layer_spec=spec, prompt_lens=lens),
                           merged(x, t, ctx, layer_spec=spec, prompt_lens=lens))
    assert rebuilt.config.routing_policy == "official"


def test_wrong_file_in_adapter_slot(tmp_path):
    model = tiny()
    base = _base_file(model, tmp_path / "base.safetensors")
    with pytest.raises(CheckpointError, match="full model checkpoint, not a LayerT2V adapter"):
        load_dit(base, adapter=base)
    save_weights_atomic({"decoder.conv1.weight": torch.zeros(2)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="not a LayerT2V adapter"):
        load_dit(base, adapter=tmp_path / "vae.safetensors")
    other = WanDiT(DiTConfig(dim=32, num_heads=1, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32))
    save_dit_adapter(other, {"blocks.5.self_attn.q": (torch.zeros(2, 32), torch.zeros(32, 2))},
                     tmp_path / "foreign.safetensors", lora_alpha=2)
    with pytest.raises(CheckpointError, match="does not fit this DiT"):
        load_dit(base, adapter=tmp_path / "foreign.safetensors")


def test_saved_weights_get_the_permissions_open_would_give(tmp_path):
    """safetensors writes its files private (0600); a shared model folder must stay readable to other users."""
    import os
    old = os.umask(0o022)
    try:
        save_weights_atomic({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "w.safetensors").st_mode & 0o777) == oct(0o644)
