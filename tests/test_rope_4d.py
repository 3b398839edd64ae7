"""4D RoPE (layer, time, height, width), the official LayerT2V option, against references written here.

The official code gives each token the position (segment index, frame within its segment, row, column); each of
the four parts of a head uses Wan's frequencies 10000^(-2i/width) computed for its own width, rotating complex
channel pairs; the default split of a 128-wide head is 8:42:40:38. The reference below builds those rotations in
complex float64 and plugs them into diffusers' WanTransformer3DModel (an independent implementation of the blocks).

Tolerance: max |ours - ref| <= 1e-4 * max |ref| in float32.
"""
import pytest
import torch

from layert2v_core import LayerSpec, load_dit
from layert2v_core.checkpoints import save_dit_adapter
from layert2v_core.dit import DiTConfig, WanDiT, apply_rope, rope_for_layered_grid, rope_tables_4d
from layert2v_core.weights import CheckpointError, save_weights_atomic

diffusers = pytest.importorskip("diffusers")
from test_dit_layers import _base_file  # noqa: E402
from test_dit_parity import diffusers_to_original  # noqa: E402

TOL = 1e-4


def reference_rotations(dims, segments, frames, height, width, theta=10000.0) -> torch.Tensor:
    """Complex [tokens, head_dim/2] rotations of the official 4D RoPE, tokens ordered (segment, frame, row, col)."""
    axes = []
    for size, d in zip((segments, frames, height, width), dims):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        axes.append(torch.polar(torch.ones(size, d // 2, dtype=torch.float64),
                                torch.arange(size, dtype=torch.float64)[:, None] * freqs))
    l, t, h, w = axes
    grid = (segments, frames, height, width)
    return torch.cat([l[:, None, None, None].expand(*grid, -1), t[None, :, None, None].expand(*grid, -1),
                      h[None, None, :, None].expand(*grid, -1), w[None, None, None, :].expand(*grid, -1)],
                     dim=-1).reshape(-1, sum(dims) // 2)


class Rope4DForDiffusers(torch.nn.Module):
    """Stands in for diffusers' WanRotaryPosEmbed: cos / sin [1, tokens, 1, head_dim], each pair's value twice."""

    def __init__(self, dims, segments, patch):
        super().__init__()
        self.dims, self.segments, self.patch = dims, segments, patch

    def forward(self, hidden_states):
        _, _, f, h, w = hidden_states.shape
        rot = reference_rotations(self.dims, self.segments, f // self.patch[0] // self.segments, h // self.patch[1],
                                  w // self.patch[2])
        return (rot.real.repeat_interleave(2, -1)[None, :, None].float(),
                rot.imag.repeat_interleave(2, -1)[None, :, None].float())


def reference_model(num_foregrounds=1):
    torch.manual_seed(1)
    # 2 heads of 128: the official default split applies.
    ref = diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=128, text_dim=32, ffn_dim=256,
                                          num_layers=2, freq_dim=32).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return ref


def base_file(ref, path):
    save_weights_atomic({k: v.contiguous() for k, v in diffusers_to_original(ref.state_dict()).items()}, path)
    return path


def layered_inputs(spec, frames=2, size=4, rows=24):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, spec.num_segments * frames, size, size, generator=g)
    ctx = torch.randn(1, rows, 32, generator=g)
    # Real lengths fill the context, so routing-free ('shared') layered attention sees exactly diffusers' rows.
    per = rows // spec.num_prompts
    lens = torch.tensor([[per] * (spec.num_prompts - 1) + [rows - per * (spec.num_prompts - 1)]])
    return x, torch.tensor([640.0]), ctx, lens


def rel_err(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("num_foregrounds", [1, 2])
def test_4d_forward_matches_reference(tmp_path, num_foregrounds):
    """Zero LayerAdaLN and routing-free attention leave RoPE as the only difference from plain Wan."""
    ref = reference_model()
    spec = LayerSpec(num_foregrounds, "shared")
    x, t, ctx, lens = layered_inputs(spec)
    ref.rope = Rope4DForDiffusers((8, 42, 40, 38), spec.num_segments, ref.config.patch_size)
    path = base_file(ref, tmp_path / "base.safetensors")
    with torch.no_grad():
        expected = ref(x, t, ctx, return_dict=False)[0]
        ours_4d, ours_3d = load_dit(path, rope="4d"), load_dit(path)
        for model in (ours_4d, ours_3d):
            model.extend_layer_categories(num_foregrounds)  # zero rows stay zero
        got = ours_4d(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        plain_3d = ours_3d(x, t, ctx, layer_spec=spec, prompt_lens=lens)
    assert rel_err(got, expected) <= TOL
    assert rel_err(plain_3d, expected) > 1e-3  # the reference does tell 3D from 4D


def test_4d_rotation_with_custom_split():
    """A head that is not 128 wide takes an explicit (layer, t, h, w) split, as rope_dim_ratios does there."""
    dims, grid = (4, 10, 10, 8), (6, 3, 2, 5)
    q = torch.randn(1, 6 * 3 * 2 * 5, 2, 32, dtype=torch.float64)
    rot = reference_rotations(dims, *grid)
    expected = torch.view_as_real(torch.view_as_complex(q.unflatten(-1, (-1, 2)).contiguous()) * rot[:, None]).flatten(-2)
    got = apply_rope(q.float(), *rope_for_layered_grid(rope_tables_4d(32, dims), *grid, device="cpu"))
    assert (got.double() - expected).abs().max() <= TOL * expected.abs().max()


def peft_folder(model: WanDiT, folder, seed=3, targets=("self_attn.q", "self_attn.k", "cross_attn.v", "ffn.0")):
    """An official-style PEFT save_pretrained folder of `model`: random LoRA B and LayerAdaLN; the wrapped model."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), modules_to_save=["layer_adaln"],
                             lora_dropout=0.0)
    wrapped = peft.get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name or "layer_modulation" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    wrapped.save_pretrained(str(folder))
    return wrapped


def _tiny_128(rope="3d"):
    torch.manual_seed(0)
    return WanDiT(DiTConfig(dim=256, num_heads=2, ffn_dim=128, num_layers=2, text_dim=32, freq_dim=32, text_len=24,
                            rope=rope)).eval()


@pytest.mark.parametrize("where", ["folder", "parent"])
def test_official_run_config_turns_4d_on(tmp_path, where):
    """An official checkpoint folder whose run config.yaml says use_4d_rope: true loads as 4D with no flag given and
    computes the 4D forward of the adapted model (PEFT's unmerged forward on a 4D model)."""
    base = _base_file(_tiny_128(), tmp_path / "base.safetensors")
    adapter = tmp_path / "run" / "checkpoints" / "step-100"
    wrapped = peft_folder(_tiny_128(rope="4d"), adapter)
    config_dir = adapter if where == "folder" else adapter.parent
    (config_dir / "config.yaml").write_text("mask_mode: vae-lora\nuse_4d_rope: true\nrope_dim_ratios: 8,42,40,38\n")
    spec = LayerSpec(1, "official")
    x, t, ctx, lens = layered_inputs(spec)
    with torch.no_grad():
        expected = wrapped(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        loaded = load_dit(base, adapter=adapter)
        got = loaded(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        as_3d = load_dit(base, adapter=adapter, rope="3d")(x, t, ctx, layer_spec=spec, prompt_lens=lens)
    assert loaded.config.rope == "4d" and tuple(loaded.config.rope_dims) == (8, 42, 40, 38)
    assert rel_err(got, expected) <= TOL
    assert rel_err(as_3d, expected) > 1e-2


def test_official_folder_without_run_config_stays_3d(tmp_path):
    base = _base_file(_tiny_128(), tmp_path / "base.safetensors")
    peft_folder(_tiny_128(), tmp_path / "adapter")
    assert load_dit(base, adapter=tmp_path / "adapter").config.rope == "3d"
    (tmp_path / "config.yaml").write_text("use_4d_rope: false\n")
    assert load_dit(base, adapter=tmp_path / "adapter").config.rope == "3d"
    (tmp_path / "config.yaml").write_text("use_4d_rope: maybe\n")
    with pytest.raises(CheckpointError, match="use_4d_rope must be true or false"):
        load_dit(base, adapter=tmp_path / "adapter")


def test_own_adapter_records_rope(tmp_path):
    torch.manual_seed(0)
    cfg = dict(dim=64, num_heads=2, ffn_dim=128, num_layers=1, text_dim=32, freq_dim=32, text_len=24)
    model = WanDiT(DiTConfig(**cfg, rope="4d", rope_dims=(4, 12, 8, 8))).eval()
    base = _base_file(WanDiT(DiTConfig(**cfg)), tmp_path / "base.safetensors")
    save_dit_adapter(model, {}, tmp_path / "adapter.safetensors", lora_alpha=1.0)
    loaded = load_dit(base, adapter=tmp_path / "adapter.safetensors")
    assert loaded.config.rope == "4d" and tuple(loaded.config.rope_dims) == (4, 12, 8, 8)
    assert load_dit(base).config.rope == "3d"
    with pytest.raises(ValueError, match="default head split .* only for head_dim 128"):
        load_dit(base, rope="4d")
    with pytest.raises(ValueError, match="rope must be one of"):
        load_dit(base, rope="5d")
