"""Official checkpoint folders: EMA weights (ema/ema_model.pt) and the lora_weights.pt fallback.

The official trainer keeps diffusers' EMAModel over its trainable parameters (LoRA A/B of every module and the
LayerAdaLN table, in the PEFT model's parameter order, then the mask modules'); its inference copies the shadow
values onto the PEFT parameters whose names hold "lora_" or "modules_to_save", in order. The reference below does
exactly that on a PEFT-wrapped model. Tolerance: max |ours - ref| <= 1e-4 * max |ref|, float32.
"""
import pytest
import torch

from layert2v_core import LayerSpec, load_dit
from layert2v_core.dit import DiTConfig, WanDiT
from layert2v_core.weights import CheckpointError

pytest.importorskip("peft")
from test_dit_layers import _base_file  # noqa: E402
from test_rope_4d import peft_folder  # noqa: E402
TOL = 1e-4


def tiny() -> WanDiT:
    torch.manual_seed(0)
    return WanDiT(DiTConfig(dim=64, num_heads=2, ffn_dim=128, num_layers=2, text_dim=32, freq_dim=32,
                            text_len=24)).eval()


def plain_base(path):
    return _base_file(tiny(), path)


def inputs(spec):
    g = torch.Generator().manual_seed(5)
    return (torch.randn(1, 16, spec.num_segments, 4, 4, generator=g), torch.tensor([500.0]),
            torch.randn(1, 24, 32, generator=g), torch.tensor([[8, 8, 8]]))


def official_folder(folder):
    return peft_folder(tiny(), folder, seed=1,
                       targets=("self_attn.q", "cross_attn.k", "ffn.2", "head.head", "time_projection.1"))


def rel_err(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


def test_ema_weights_are_applied_as_the_official_inference_does(tmp_path):
    base = plain_base(tmp_path / "base.safetensors")
    folder = tmp_path / "checkpoint-500"
    wrapped = official_folder(folder)
    trainable = [p for name, p in wrapped.named_parameters() if "lora_" in name or "modules_to_save" in name]
    g = torch.Generator().manual_seed(2)
    shadow = [torch.randn(p.shape, generator=g) * 0.1 for p in trainable]
    mask_modules = [torch.randn(6, 1, 3, 3, 3, generator=g), torch.randn(6, generator=g)]  # trail, unused
    (folder / "ema").mkdir()
    torch.save({"decay": 0.9999, "min_decay": 0.0, "optimization_step": 500, "update_after_step": 0,
                "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75, "shadow_params": shadow + mask_modules},
               folder / "ema" / "ema_model.pt")
    spec = LayerSpec(1, "official")
    x, t, ctx, lens = inputs(spec)
    with torch.no_grad():
        raw = wrapped(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        for p, value in zip(trainable, shadow):
            p.copy_(value)
        expected = wrapped(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        got = load_dit(base, adapter=folder, ema=True)(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        picked = load_dit(base, adapter=folder / "ema" / "ema_model.pt")(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        default = load_dit(base, adapter=folder)(x, t, ctx, layer_spec=spec, prompt_lens=lens)
    assert rel_err(got, expected) <= TOL and rel_err(picked, expected) <= TOL
    assert rel_err(default, raw) <= TOL and rel_err(default, expected) > 1e-2  # without EMA: the raw weights


def test_ema_of_another_run_is_refused(tmp_path):
    base = plain_base(tmp_path / "base.safetensors")
    official_folder(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "ema").mkdir()
    torch.save({"shadow_params": [torch.zeros(3, 3)]}, tmp_path / "ckpt" / "ema" / "ema_model.pt")
    with pytest.raises(CheckpointError, match="EMA holds 1 tensors"):
        load_dit(base, adapter=tmp_path / "ckpt", ema=True)
    official_folder(tmp_path / "no_ema")
    with pytest.raises(FileNotFoundError, match="EMA weights asked for"):
        load_dit(base, adapter=tmp_path / "no_ema", ema=True)


def test_lora_weights_fallback_takes_its_scale_from_the_run_config(tmp_path):
    base = plain_base(tmp_path / "base.safetensors")
    folder = tmp_path / "run" / "checkpoint-100"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(3)
    down, up, table = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g), torch.randn(4, 6, 64)
    torch.save({"base_model.model.blocks.1.cross_attn.o.lora_A.default.weight": down,
                "base_model.model.blocks.1.cross_attn.o.lora_B.default.weight": up,
                "base_model.model.layer_adaln.modules_to_save.default.layer_modulation": table},
               folder / "lora_weights.pt")
    with pytest.raises(CheckpointError, match="neither adapter_config.json nor a run config.yaml"):
        load_dit(base, adapter=folder)
    (folder.parent / "config.yaml").write_text("lora_rank: 4\nlora_alpha: 12\nuse_4d_rope: false\n")
    loaded = load_dit(base, adapter=folder / "lora_weights.pt")
    plain = load_dit(base)
    expected = plain.blocks[1].cross_attn.o.weight + 3.0 * up @ down
    assert torch.allclose(loaded.blocks[1].cross_attn.o.weight, expected, atol=1e-5)
    assert torch.equal(loaded.layer_adaln.layer_modulation, table)
    assert loaded.config.routing_policy == "official"
