"""The official mask modes other than vae-lora, against references written here from the official code's behaviour.

vae: the matte repeated to 3 channels in [-1, 1] through the plain Wan VAE; decoded as the channel mean mapped to
[0, 1]. downsample: trilinear (align_corners=False) resize to the latent grid, [-1, 1], repeated on every latent
channel; decoded as the channel mean, [0, 1], resized back to 4(T'-1)+1 frames x 8. downsample-project: the
official MaskEncoder / MaskDecoder convolutions (state dicts in mask_encoder.pt / mask_decoder.pt). mask-vae-*: the
official dedicated MaskVAE (mask_vae.pt) with project_in after its encoder and project_out before its decoder
(mask_vae_projects.pt), computed here by hand from the files' tensors.

Tolerance: 1e-4 absolute on mattes in [0, 1] and latents of unit scale, float32.
"""
from __future__ import annotations

import argparse
import pickle

import pytest
import torch
import torch.nn.functional as F

from layert2v_core.mask_modes import (DownsampledMatte, PlainVAEMatte, load_mask_mode, mode_of_file)
from layert2v_core.vae import VAEConfig, WanVAE
from layert2v_core.weights import CheckpointError

TOL = 1e-4


def _vae() -> WanVAE:
    torch.manual_seed(11)
    return WanVAE(VAEConfig(dim=8, z_dim=4, num_res_blocks=1)).eval().requires_grad_(False)


def _matte(frames=5, size=16):
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 1, frames, size, size, generator=g)


def test_vae_mode_is_the_plain_vae():
    vae, alpha = _vae(), _matte()
    codec = load_mask_mode(vae, "vae")
    with torch.no_grad():
        latent = codec.encode(alpha)
        expected_latent = vae.encode(torch.cat([alpha * 2 - 1] * 3, dim=1))
        rgb = vae.decode(latent).clamp(-1, 1)
        expected = ((rgb[:, 0:1] + rgb[:, 1:2] + rgb[:, 2:3]) / 3 + 1) / 2
        got = codec.decode(latent)
    assert isinstance(codec, PlainVAEMatte) and load_mask_mode(vae).mask_mode == "vae"  # no file: 'vae'
    assert (latent - expected_latent).abs().max() <= TOL
    assert got.shape == alpha.shape and (got - expected.clamp(0, 1)).abs().max() <= TOL


def test_downsample_mode():
    vae, alpha = _vae(), _matte(frames=9, size=32)
    codec = load_mask_mode(vae, "downsample")
    latent = codec.encode(alpha)
    small = F.interpolate(alpha, size=(3, 4, 4), mode="trilinear", align_corners=False)
    assert latent.shape == (2, 4, 3, 4, 4)
    assert (latent - (small * 2 - 1).repeat(1, 4, 1, 1, 1)).abs().max() <= TOL
    noisy = latent + torch.randn_like(latent) * 0.1
    back = F.interpolate((noisy.mean(1, keepdim=True) + 1) / 2, size=(9, 32, 32), mode="trilinear",
                         align_corners=False).clamp(0, 1)
    assert (codec.decode(noisy) - back).abs().max() <= TOL
    # Known answer: a constant matte stays that constant through both directions.
    const = DownsampledMatte(4)
    flat = torch.full((1, 1, 5, 16, 16), 0.25)
    assert torch.allclose(const.encode(flat), torch.full((1, 4, 2, 2, 2), -0.5))
    assert torch.allclose(const.decode(const.encode(flat)), flat)


def _official_state(hidden=6, channels=4, seed=0):
    """Random tensors under the key names the official MaskEncoder / MaskDecoder state dicts have."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    encoder = {"encoder.0.weight": rnd(hidden, 1, 3, 3, 3), "encoder.0.bias": rnd(hidden),
               "encoder.2.weight": rnd(hidden, hidden, 3, 3, 3), "encoder.2.bias": rnd(hidden),
               "encoder.4.weight": rnd(channels, hidden, 3, 3, 3), "encoder.4.bias": rnd(channels)}
    decoder = {"decoder.0.weight": rnd(channels, hidden, 3, 3, 3), "decoder.0.bias": rnd(hidden),  # transposed:
               "decoder.2.weight": rnd(hidden, hidden, 3, 3, 3), "decoder.2.bias": rnd(hidden),    # [in, out, ...]
               "decoder.4.weight": rnd(hidden, 1, 3, 3, 3), "decoder.4.bias": rnd(1),
               "refine.0.weight": rnd(hidden, 1, 3, 3, 3), "refine.0.bias": rnd(hidden),
               "refine.2.weight": rnd(1, hidden, 3, 3, 3), "refine.2.bias": rnd(1)}
    return encoder, decoder


def reference_encode(s, alpha):
    x = alpha * 2 - 1
    x = F.silu(F.conv3d(x, s["encoder.0.weight"], s["encoder.0.bias"], stride=2, padding=1))
    x = F.silu(F.conv3d(x, s["encoder.2.weight"], s["encoder.2.bias"], stride=2, padding=1))
    x = F.conv3d(x, s["encoder.4.weight"], s["encoder.4.bias"], stride=(1, 2, 2), padding=1)
    size = ((alpha.shape[2] - 1) // 4 + 1, alpha.shape[3] // 8, alpha.shape[4] // 8)
    return x if tuple(x.shape[2:]) == size else F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def reference_decode(s, z):
    x = F.silu(F.conv_transpose3d(z, s["decoder.0.weight"], s["decoder.0.bias"], stride=(1, 2, 2), padding=1,
                                  output_padding=(0, 1, 1)))
    x = F.silu(F.conv_transpose3d(x, s["decoder.2.weight"], s["decoder.2.bias"], stride=2, padding=1,
                                  output_padding=1))
    x = F.conv_transpose3d(x, s["decoder.4.weight"], s["decoder.4.bias"], stride=2, padding=1, output_padding=1)
    size = ((z.shape[2] - 1) * 4 + 1, z.shape[3] * 8, z.shape[4] * 8)
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    r = F.conv3d(F.silu(F.conv3d(x, s["refine.0.weight"], s["refine.0.bias"], padding=1)),
                 s["refine.2.weight"], s["refine.2.bias"], padding=1)
    return ((x + r + 1) / 2).clamp(0, 1)


def test_downsample_project_matches_the_official_modules(tmp_path):
    encoder, decoder = _official_state()
    torch.save(encoder, tmp_path / "mask_encoder.pt")
    torch.save(decoder, tmp_path / "mask_decoder.pt")
    vae, alpha = _vae(), _matte(frames=9, size=32)
    codec = load_mask_mode(vae, None, tmp_path / "mask_decoder.pt")
    assert codec.mask_mode == "downsample-project" and mode_of_file(tmp_path) == "downsample-project"
    with torch.no_grad():
        latent = codec.encode(alpha)
        expected = reference_encode({**encoder}, alpha)
        assert latent.shape == (2, 4, 3, 4, 4) and (latent - expected).abs().max() <= TOL
        z = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(4))
        assert (codec.decode(z) - reference_decode(decoder, z)).abs().max() <= TOL


def test_mask_mode_files_are_checked(tmp_path):
    vae = _vae()
    encoder, decoder = _official_state()
    torch.save(encoder, tmp_path / "mask_encoder.pt")
    with pytest.raises(FileNotFoundError, match="missing \\['mask_decoder.pt'\\]"):
        load_mask_mode(vae, "downsample-project", tmp_path)
    torch.save({**decoder, "refine.9.weight": torch.zeros(1)}, tmp_path / "mask_decoder.pt")
    with pytest.raises(CheckpointError, match="refine.9.weight"):
        load_mask_mode(vae, "downsample-project", tmp_path)
    torch.save({"decoder": argparse.Namespace(code="runs on load")}, tmp_path / "mask_decoder.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # never unpickled
        load_mask_mode(vae, "downsample-project", tmp_path)
    with pytest.raises(FileNotFoundError, match="'mask-vae-joint' mask mode needs the MaskVAE mask_vae.pt"):
        load_mask_mode(vae, "mask-vae-joint", tmp_path)  # a folder with neither mask_vae.pt nor projections
    with pytest.raises(FileNotFoundError, match="'vae-lora' mask mode needs the alpha VAE file"):
        load_mask_mode(vae, "vae-lora")


# ---- the modes through the model folder, the pipeline and a ComfyUI graph ----

def test_model_folder_without_alpha_vae_generates_in_vae_mode(tmp_path):
    from layert2v_core.model_folder import demo_model_folder, find_components, load_pipeline

    folder = tmp_path / "model"
    folder.mkdir()
    demo = find_components(demo_model_folder())
    for name, part in (("dit.safetensors", demo.dit), ("vae.safetensors", demo.vae),  # the demo model, no alpha VAE
                       ("text_encoder.safetensors", demo.text_encoder)):
        (folder / name).symlink_to(part)
    paths = find_components(folder)
    assert paths.mask_vae is None
    pipe = load_pipeline(paths)
    assert pipe.mask_vae.mask_mode == "vae"
    result = pipe("a red circle", "a field", ["a red circle"], frames=5, height=16, width=16, steps=2)
    assert result.alphas[0].shape == (1, 5, 16, 16) and 0 <= result.alphas[0].min() <= result.alphas[0].max() <= 1
    assert result.settings["mask_mode"] == "vae" and result.settings["rope"] == "3d"  # recorded in manifest.json


def test_mask_files_and_run_config_beside_an_official_adapter(tmp_path):
    from layert2v_core.mask_modes import choose_mask_mode
    from layert2v_core.model_folder import find_components

    folder, adapter = tmp_path / "model", tmp_path / "model" / "adapter"
    adapter.mkdir(parents=True)
    for name in ("dit.safetensors", "vae.safetensors", "text_encoder.safetensors"):
        (folder / name).touch()
    encoder, decoder = _official_state()
    torch.save(encoder, adapter / "mask_encoder.pt")
    torch.save(decoder, adapter / "mask_decoder.pt")
    paths = find_components(folder)
    assert paths.adapter == adapter and paths.mask_vae == adapter / "mask_decoder.pt"
    assert choose_mask_mode(paths.mask_vae, paths.adapter) == ("downsample-project", adapter / "mask_decoder.pt")
    (tmp_path / "model" / "config.yaml").write_text("mask_mode: downsample\nuse_4d_rope: false\n")
    assert choose_mask_mode(None, adapter) == ("downsample", None)
    (adapter / "config.yaml").write_text("mask_mode: vae-lora\n")
    with pytest.raises(FileNotFoundError, match="says mask_mode 'vae-lora', which needs mask_vae_lora.pt"):
        choose_mask_mode(None, adapter)


@pytest.mark.parametrize("alpha", ["none: plain Wan VAE (official 'vae' mode)", "official_run/mask_decoder.pt",
                                   "official_mask_vae_run/mask_vae.pt"])
def test_comfy_graph_runs_with_official_mask_modes(alpha, comfy_folders):
    """The demo model's text-to-layers graph with the alpha VAE loader set to an official mask mode."""
    import json
    from pathlib import Path

    from test_workflows import FAST, run_api_graph
    from workflows.build import DEMO, api_path

    run = comfy_folders[0] / "layert2v" / "official_run"
    run.mkdir(exist_ok=True)
    encoder, decoder = _official_state(hidden=4, channels=16)
    torch.save(encoder, run / "mask_encoder.pt")
    torch.save(decoder, run / "mask_decoder.pt")
    _official_mask_vae_run(comfy_folders[0] / "layert2v" / "official_mask_vae_run", channels=16)
    graph = json.loads((Path(__file__).resolve().parent.parent / api_path("layert2v_text_to_layers", DEMO)).read_text())
    loader = next(n for n in graph.values() if n["class_type"] == "LayerT2VVAELoader")
    loader["inputs"]["alpha_vae_name"] = alpha
    results = run_api_graph(graph, {**FAST[DEMO], "LayerT2VSampler": {"steps": 2}})
    vae = next(results[k][0] for k, n in graph.items() if n["class_type"] == "LayerT2VVAELoader")
    decoded = next(results[k] for k, n in graph.items() if n["class_type"] == "LayerT2VDecodeLayers")
    modes = {"mask_decoder.pt": "downsample-project", "mask_vae.pt": "mask-vae-project"}
    assert vae.mask_vae.mask_mode == ("vae" if alpha.startswith("none") else modes[alpha.split("/")[-1]])
    mask = decoded[3]
    width, height, frames = DEMO.size  # the demo model's own size (its generation.json)
    assert mask.shape == (frames, height, width) and 0 <= mask.min() <= mask.max() <= 1


def test_vae_loader_picks_the_mask_files_beside_the_models_adapter(comfy_folders):
    """'auto' in Load LayerT2V VAE: an official run's mask files (and config.yaml) beside the connected model's
    adapter, found as the CLI finds them in a model folder."""
    from nodes import NODE_CLASS_MAPPINGS
    from nodes.common import LayerT2VInputError, LoadedModel
    from nodes.loaders import BESIDE_ADAPTER, BUILTIN

    run = comfy_folders[0] / "layert2v" / "official_auto_run"
    run.mkdir(exist_ok=True)
    loader = NODE_CLASS_MAPPINGS["LayerT2VVAELoader"]()
    assert BESIDE_ADAPTER in loader.INPUT_TYPES()["required"]["alpha_vae_name"][0]
    model = LoadedModel(None, "keep on GPU", "x", run)
    (run / "config.yaml").write_text("mask_mode: downsample\n")  # a run whose mode needs no file says so
    assert loader.load(BUILTIN, BESIDE_ADAPTER, "off", 256, 64, model)[0].mask_vae.mask_mode == "downsample"
    (run / "config.yaml").unlink()
    encoder, decoder = _official_state(hidden=4, channels=16)
    torch.save(encoder, run / "mask_encoder.pt")
    torch.save(decoder, run / "mask_decoder.pt")
    vae = loader.load(BUILTIN, BESIDE_ADAPTER, "off", 256, 64, model)[0]
    assert vae.mask_vae.mask_mode == "downsample-project"
    with pytest.raises(LayerT2VInputError, match="connect its model output"):
        loader.load(BUILTIN, BESIDE_ADAPTER, "off", 256, 64)


def _projection_state(channels=16, hidden=8, seed=5):
    """Random official mask_vae_projects.pt contents: per-position gated MLPs, project_in with its affine."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    mlp = lambda: {"proj.mlp.0.weight": rnd(hidden, channels), "proj.mlp.0.bias": rnd(hidden),  # noqa: E731
                   "proj.mlp.2.weight": rnd(channels, hidden), "proj.mlp.2.bias": rnd(channels),
                   "proj.gate": torch.tensor(0.7)}
    return {"proj_in": {"pre_scale": 1 + rnd(1, channels, 1, 1, 1), "pre_bias": rnd(1, channels, 1, 1, 1), **mlp()},
            "proj_out": mlp(), "config": {"latent_channels": channels, "hidden_channels": hidden, "mlp_depth": 2,
                                          "norm_type": "none", "gate_init": 0.0}}


def reference_projection(s, z, affine):
    if affine:
        z = z * s["pre_scale"] + s["pre_bias"]
    h = z.permute(0, 2, 3, 4, 1)
    y = F.silu(h @ s["proj.mlp.0.weight"].T + s["proj.mlp.0.bias"]) @ s["proj.mlp.2.weight"].T + s["proj.mlp.2.bias"]
    return (h + torch.tanh(s["proj.gate"]) * y).permute(0, 4, 1, 2, 3)


def test_vae_project_runs_its_projections_around_the_dit(tmp_path):
    """Official 'vae-project' sampling: project_in on the mask segment of the DiT input, project_out on the mask
    segment of its velocity, every call; a folder holding mask_vae_projects.pt brings them along."""
    from test_dit_layers import _base_file, sample, tiny
    from test_rope_4d import peft_folder

    from layert2v_core import LayerSpec, load_dit
    from layert2v_core.mask_modes import choose_mask_mode

    base = _base_file(tiny(), tmp_path / "base.safetensors")
    folder = tmp_path / "checkpoint"
    peft_folder(tiny(), folder)
    state = _projection_state()
    torch.save(state, folder / "mask_vae_projects.pt")
    spec = LayerSpec(1, "official")
    x, t, ctx, lens = sample(spec)
    with torch.no_grad():
        model = load_dit(base, adapter=folder)
        got = model(x, t, ctx, layer_spec=spec, prompt_lens=lens)
        assert model.mask_projection is not None
        model.mask_projection = None
        parts = spec.split(x)
        parts["mask1"] = reference_projection(state["proj_in"], parts["mask1"], affine=True)
        velocity = spec.split(model(spec.join(parts), t, ctx, layer_spec=spec, prompt_lens=lens))
        velocity["mask1"] = reference_projection(state["proj_out"], velocity["mask1"], affine=False)
        expected = spec.join(velocity)
    assert (got - expected).abs().max() <= TOL * expected.abs().max()
    assert (got - model(x, t, ctx, layer_spec=spec, prompt_lens=lens)).abs().max() > 1e-2
    assert choose_mask_mode(None, folder)[0] == "vae-project"
    assert load_mask_mode(_vae(), "vae-project").mask_mode == "vae-project"  # decoded by the plain VAE


# ---- mask-vae-project / mask-vae-joint: the official dedicated MaskVAE (mask_vae.pt) and its projections ----

def _official_mask_vae(hidden=8, latent=4, blocks=1, mult=(1, 2, 4), mlp_depth=2, mlp_ratio=2, seed=7):
    """Random tensors in the official mask_vae.pt layout: {encoder, decoder, config}, written out key by key."""
    g = torch.Generator().manual_seed(seed)
    conv = lambda cout, cin, k=3: {"weight": torch.randn(cout, cin, k, k, k, generator=g) / (cin * k ** 3) ** 0.5,
                                   "bias": torch.randn(cout, generator=g) * 0.1}  # noqa: E731
    norm = lambda c: {"weight": 1 + torch.randn(c, generator=g) * 0.1,
                      "bias": torch.randn(c, generator=g) * 0.1}  # noqa: E731
    linear = lambda cout, cin: {"weight": torch.randn(cout, cin, generator=g) / cin ** 0.5,
                                "bias": torch.randn(cout, generator=g) * 0.1}  # noqa: E731

    def put(state, prefix, tensors):
        state.update({f"{prefix}.{k}": v for k, v in tensors.items()})

    def res_block(state, prefix, cin, cout):  # residual = GroupNorm, SiLU, conv, GroupNorm, SiLU, conv
        put(state, f"{prefix}.residual.0", norm(cin))
        put(state, f"{prefix}.residual.2", conv(cout, cin))
        put(state, f"{prefix}.residual.3", norm(cout))
        put(state, f"{prefix}.residual.5", conv(cout, cout))
        if cin != cout:
            put(state, f"{prefix}.shortcut", conv(cout, cin, 1))

    def mlp(state, channels):  # Linear (SiLU) ... Linear (Identity): weights at even indices
        widths = [channels] + [channels * mlp_ratio] * (mlp_depth - 1) + [channels]
        for i in range(mlp_depth):
            put(state, f"bottleneck_mlp.mlp.{2 * i}", linear(widths[i + 1], widths[i]))

    dims = [hidden * m for m in mult]
    enc, dec = {}, {}
    put(enc, "conv_in", conv(hidden, 1))
    for s, out in enumerate(dims):
        cin = hidden if s == 0 else dims[s - 1]
        for i in range(blocks):
            res_block(enc, f"down_blocks.{s}.{i}", cin if i == 0 else out, out)
        put(enc, f"down_blocks.{s}.{blocks}.conv", conv(out, out))
    mlp(enc, dims[-1])
    put(enc, "conv_out.0", norm(dims[-1]))
    put(enc, "conv_out.2", conv(latent, dims[-1]))
    put(dec, "conv_in", conv(dims[-1], latent))
    mlp(dec, dims[-1])
    ups = dims[::-1][1:] + [hidden]
    for s, out in enumerate(ups):
        cin = dims[-1] if s == 0 else ups[s - 1]
        put(dec, f"up_blocks.{s}.0.conv", conv(cin, cin))
        for j in range(blocks + 1):
            res_block(dec, f"up_blocks.{s}.{j + 1}", cin if j == 0 else out, out)
    put(dec, "conv_out.0", norm(hidden))
    put(dec, "conv_out.2", conv(1, hidden))
    config = {"hidden_channels": hidden, "latent_channels": latent, "dim_mult": list(mult),
              "temporal_downsample": [False, True, True]}
    return {"encoder": enc, "decoder": dec, "config": config}


def _frame_group_norm(x, w, b, groups=8, eps=1e-5):
    """GroupNorm of each frame: mean and variance over a group's channels and the frame's pixels."""
    B, C, T, H, W = x.shape
    g = x.reshape(B, groups, C // groups, T, H, W)
    mean, var = g.mean(dim=(2, 4, 5), keepdim=True), g.var(dim=(2, 4, 5), unbiased=False, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(B, C, T, H, W)
    return y * w.view(1, C, 1, 1, 1) + b.view(1, C, 1, 1, 1)


def _ref_res_block(s, p, x):
    h = F.silu(_frame_group_norm(x, s[f"{p}.residual.0.weight"], s[f"{p}.residual.0.bias"]))
    h = F.conv3d(h, s[f"{p}.residual.2.weight"], s[f"{p}.residual.2.bias"], padding=1)
    h = F.silu(_frame_group_norm(h, s[f"{p}.residual.3.weight"], s[f"{p}.residual.3.bias"]))
    h = F.conv3d(h, s[f"{p}.residual.5.weight"], s[f"{p}.residual.5.bias"], padding=1)
    skip = F.conv3d(x, s[f"{p}.shortcut.weight"], s[f"{p}.shortcut.bias"]) if f"{p}.shortcut.weight" in s else x
    return skip + h


def _ref_mlp(s, x):
    h, i = x.permute(0, 2, 3, 4, 1), 0
    while f"bottleneck_mlp.mlp.{i + 2}.weight" in s:
        h = F.silu(h @ s[f"bottleneck_mlp.mlp.{i}.weight"].T + s[f"bottleneck_mlp.mlp.{i}.bias"])
        i += 2
    h = h @ s[f"bottleneck_mlp.mlp.{i}.weight"].T + s[f"bottleneck_mlp.mlp.{i}.bias"]
    return x + h.permute(0, 4, 1, 2, 3)


def _ref_out(s, x):
    x = F.silu(_frame_group_norm(x, s["conv_out.0.weight"], s["conv_out.0.bias"]))
    return F.conv3d(x, s["conv_out.2.weight"], s["conv_out.2.bias"], padding=1)


def reference_mask_vae_encode(s, x, blocks=1, time_strides=(1, 2, 2)):
    """Matte in [-1, 1] -> raw MaskVAE latent: conv_in, per stage ResBlocks then a stride (t, 2, 2) conv, MLP, out."""
    x = F.conv3d(x, s["conv_in.weight"], s["conv_in.bias"], padding=1)
    for stage, t in enumerate(time_strides):
        for i in range(blocks):
            x = _ref_res_block(s, f"down_blocks.{stage}.{i}", x)
        x = F.conv3d(x, s[f"down_blocks.{stage}.{blocks}.conv.weight"], s[f"down_blocks.{stage}.{blocks}.conv.bias"],
                     stride=(t, 2, 2), padding=1)
    return _ref_out(s, _ref_mlp(s, x))


def reference_mask_vae_decode(s, z, size, blocks=1, time_scales=(2, 2, 1)):
    """Raw latent -> matte in [-1, 1]: conv_in, MLP, per stage trilinear x(t, 2, 2) + conv then ResBlocks, out,
    trilinear resize to the video's (T, H, W)."""
    x = _ref_mlp(s, F.conv3d(z, s["conv_in.weight"], s["conv_in.bias"], padding=1))
    for stage, t in enumerate(time_scales):
        x = F.interpolate(x, scale_factor=(t, 2, 2), mode="trilinear", align_corners=False)
        x = F.conv3d(x, s[f"up_blocks.{stage}.0.conv.weight"], s[f"up_blocks.{stage}.0.conv.bias"], padding=1)
        for j in range(blocks + 1):
            x = _ref_res_block(s, f"up_blocks.{stage}.{j + 1}", x)
    return F.interpolate(_ref_out(s, x), size=size, mode="trilinear", align_corners=False)


def _with_rms_norm(state, seed=9):
    """Projections as the official trainer makes them by default (mask_vae_proj_norm: rmsnorm)."""
    g = torch.Generator().manual_seed(seed)
    for part in ("proj_in", "proj_out"):
        channels = state[part]["proj.mlp.2.bias"].shape[0]
        state[part]["proj.norm.weight"] = 1 + torch.randn(channels, generator=g) * 0.2
    state["config"]["norm_type"] = "rmsnorm"
    return state


def reference_normed_projection(s, z, affine):
    if affine:
        z = z * s["pre_scale"] + s["pre_bias"]
    h = z.permute(0, 2, 3, 4, 1)
    y = F.silu(h @ s["proj.mlp.0.weight"].T + s["proj.mlp.0.bias"]) @ s["proj.mlp.2.weight"].T + s["proj.mlp.2.bias"]
    y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * s["proj.norm.weight"]
    return (h + torch.tanh(s["proj.gate"]) * y).permute(0, 4, 1, 2, 3)


def _official_mask_vae_run(folder, channels=4, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    mask_vae, projections = _official_mask_vae(latent=channels, **kw), _with_rms_norm(_projection_state(channels))
    torch.save(mask_vae, folder / "mask_vae.pt")
    torch.save(projections, folder / "mask_vae_projects.pt")
    return mask_vae, projections


def test_mask_vae_modes_match_the_official_computation(tmp_path):
    """encode = project_in(MaskVAE.encode(2a - 1)); decode = (MaskVAE.decode(project_out(z), video) + 1) / 2, clamped;
    the architecture's depth (1 block per stage, a 2-layer MLP of ratio 2) read from the tensors."""
    from layert2v_core.mask_modes import DedicatedMaskVAEMatte

    mask_vae, projections = _official_mask_vae_run(tmp_path / "run")
    vae, alpha = _vae(), _matte(frames=9, size=32)
    codec = load_mask_mode(vae, None, tmp_path / "run" / "mask_vae.pt")
    assert isinstance(codec, DedicatedMaskVAEMatte) and codec.mask_mode == "mask-vae-project"
    config = codec.mask_vae.config
    assert (config.num_res_blocks, config.mlp_depth, config.mlp_ratio) == (1, 2, 2)
    z = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        latent = codec.encode(alpha)
        raw = reference_mask_vae_encode(mask_vae["encoder"], alpha * 2 - 1)
        expected = reference_normed_projection(projections["proj_in"], raw, affine=True)
        matte = codec.decode(z)
        out = reference_normed_projection(projections["proj_out"], z, affine=False)
        expected_matte = ((reference_mask_vae_decode(mask_vae["decoder"], out, (9, 32, 32)) + 1) / 2).clamp(0, 1)
    assert latent.shape == (2, 4, 3, 4, 4) and matte.shape == (2, 1, 9, 32, 32)
    assert (latent - expected).abs().max() <= TOL * max(1.0, expected.abs().max().item())
    assert (matte - expected_matte).abs().max() <= TOL
    assert 0 < expected_matte.mean() < 1 and expected_matte.std() > 0.01  # neither clamped flat nor constant
    # The projections are in use on both sides (their gates are open): without them the results move.
    with torch.no_grad():
        assert (latent - raw).abs().max() > 1e-2
        bare = ((reference_mask_vae_decode(mask_vae["decoder"], z, (9, 32, 32)) + 1) / 2).clamp(0, 1)
        assert (matte - bare).abs().max() > 1e-3


def test_official_mask_vae_run_folder_is_found_and_used(tmp_path, caplog):
    """A mask-vae-joint checkpoint folder (mask_vae.pt + mask_vae_projects.pt, config.yaml) beside a model: found,
    named in the log, the DiT left without projections; a mask-vae-project one saves no mask_vae.pt and says so."""
    import logging

    from test_dit_layers import _base_file, tiny
    from test_rope_4d import peft_folder

    from layert2v_core import load_dit
    from layert2v_core.mask_modes import choose_mask_mode
    from layert2v_core.model_folder import find_components

    folder, adapter = tmp_path / "model", tmp_path / "model" / "adapter"
    peft_folder(tiny(), adapter)
    for name in ("dit.safetensors", "vae.safetensors", "text_encoder.safetensors"):
        (folder / name).touch()
    mask_vae, _ = _official_mask_vae_run(adapter)
    (adapter / "config.yaml").write_text("mask_mode: mask-vae-joint\nuse_4d_rope: false\n")
    paths = find_components(folder)
    assert paths.mask_vae == adapter / "mask_vae.pt"
    with caplog.at_level(logging.INFO, logger="layert2v_core.mask_modes"):
        matte = choose_mask_mode(paths.mask_vae, paths.adapter)
    assert matte == ("mask-vae-joint", adapter / "mask_vae.pt")
    message = caplog.records[-1].getMessage()
    assert "config.yaml" in message and str(adapter / "mask_vae.pt") in message
    assert str(adapter / "mask_vae_projects.pt") in message
    codec, alpha = load_mask_mode(_vae(), *matte, adapter=paths.adapter), _matte(frames=5, size=16)
    assert codec.mask_mode == "mask-vae-joint"
    assert load_dit(_base_file(tiny(), tmp_path / "base.safetensors"), adapter=adapter).mask_projection is None

    # mask-vae-project: the frozen stage-1 MaskVAE is not in the checkpoint; the error says where it comes from.
    (adapter / "mask_vae.pt").unlink()
    (adapter / "config.yaml").write_text("mask_mode: mask-vae-project\n")
    with pytest.raises(FileNotFoundError, match=r"missing \['mask_vae.pt'\].*train_maskvae.py"):
        choose_mask_mode(find_components(folder).mask_vae, adapter)
    stage1 = tmp_path / "stage1" / "mask_vae.pt"
    stage1.parent.mkdir()
    torch.save(mask_vae, stage1)  # given explicitly, it takes the checkpoint's projections
    assert choose_mask_mode(stage1, adapter) == ("mask-vae-project", stage1)
    with pytest.raises(FileNotFoundError, match=r"missing \['mask_vae_projects.pt'\]"):
        load_mask_mode(_vae(), "mask-vae-project", stage1)  # alone it has no projections
    with torch.no_grad():
        assert torch.equal(load_mask_mode(_vae(), "mask-vae-project", stage1, adapter=adapter).encode(alpha),
                           codec.encode(alpha))


def test_mask_vae_files_that_do_not_fit_are_named(tmp_path):
    vae, run = _vae(), tmp_path / "run"
    mask_vae, projections = _official_mask_vae_run(run)
    path = run / "mask_vae.pt"
    partial = {**mask_vae, "decoder": {k: v for k, v in mask_vae["decoder"].items() if k != "conv_out.2.bias"}}
    torch.save(partial, path)
    with pytest.raises(CheckpointError, match=r"mask_vae.pt: .*decoder.*missing key\(s\), first: \['conv_out.2.b"):
        load_mask_mode(vae, None, path)
    wrong = {**mask_vae, "decoder": {**mask_vae["decoder"], "conv_in.weight": torch.zeros(32, 4, 1, 1, 1)}}
    torch.save(wrong, path)
    with pytest.raises(CheckpointError, match=r"mask_vae.pt: .*conv_in.weight is \(32, 4, 1, 1, 1\)"):
        load_mask_mode(vae, None, path)
    torch.save({**mask_vae, "config": {**mask_vae["config"], "hidden_channels": 96}}, path)
    with pytest.raises(CheckpointError, match="config says {'hidden_channels': 96}"):
        load_mask_mode(vae, None, path)
    torch.save(mask_vae, path)
    torch.save(_with_rms_norm(_projection_state(channels=16)), run / "mask_vae_projects.pt")
    with pytest.raises(CheckpointError, match="encodes to 4 channels but .*projects 16"):
        load_mask_mode(vae, None, path)
    torch.save(projections, run / "mask_vae_projects.pt")
    with pytest.raises(CheckpointError, match="encodes to 4 channels but the VAE latent has 16"):
        load_mask_mode(WanVAE(VAEConfig(dim=8, z_dim=16, num_res_blocks=1)), None, path)
    torch.save({"encoder": argparse.Namespace(code="runs on load"), "decoder": {}}, path)
    with pytest.raises(CheckpointError, match="mask_vae.pt: refused"):  # never unpickled
        load_mask_mode(vae, None, path)
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match="mask_vae.pt: not a readable PyTorch checkpoint"):
        load_mask_mode(vae, None, path)
