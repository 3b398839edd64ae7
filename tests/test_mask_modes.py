"""The official mask modes other than vae-lora, against references written here from the official code's behaviour.

vae: the matte repeated to 3 channels in [-1, 1] through the plain Wan VAE; decoded as the channel mean mapped to
[0, 1]. downsample: trilinear (align_corners=False) resize to the latent grid, [-1, 1], repeated on every latent
channel; decoded as the channel mean, [0, 1], resized back to 4(T'-1)+1 frames x 8. downsample-project: the
official MaskEncoder / MaskDecoder convolutions (state dicts in mask_encoder.pt / mask_decoder.pt).

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
    with pytest.raises(CheckpointError, match="'mask-vae-joint' mask mode is not supported yet"):
        load_mask_mode(vae, "mask-vae-joint")
    with pytest.raises(FileNotFoundError, match="'vae-lora' mask mode needs the alpha VAE file"):
        load_mask_mode(vae, "vae-lora")


# ---- the modes through the model folder, the pipeline and a ComfyUI graph ----

def test_model_folder_without_alpha_vae_generates_in_vae_mode(tmp_path):
    from layert2v_core.model_folder import demo_model_folder, find_components, load_pipeline

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("dit.safetensors", "vae.safetensors", "text_encoder.safetensors"):  # the demo model, no alpha VAE
        (folder / name).symlink_to(demo_model_folder() / name)
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


@pytest.mark.parametrize("alpha", ["none: plain Wan VAE (official 'vae' mode)", "official_run/mask_decoder.pt"])
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
    graph = json.loads((Path(__file__).resolve().parent.parent / api_path("layert2v_text_to_layers", DEMO)).read_text())
    loader = next(n for n in graph.values() if n["class_type"] == "LayerT2VVAELoader")
    loader["inputs"]["alpha_vae_name"] = alpha
    results = run_api_graph(graph, {**FAST[DEMO], "LayerT2VSampler": {"steps": 2}})
    vae = next(results[k][0] for k, n in graph.items() if n["class_type"] == "LayerT2VVAELoader")
    decoded = next(results[k] for k, n in graph.items() if n["class_type"] == "LayerT2VDecodeLayers")
    assert vae.mask_vae.mask_mode == ("vae" if alpha.startswith("none") else "downsample-project")
    mask = decoded[3]
    width, height, frames = DEMO.size  # the demo model's own size (its generation.json)
    assert mask.shape == (frames, height, width) and 0 <= mask.min() <= mask.max() <= 1


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
