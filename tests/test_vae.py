"""Wan2.1 VAE: parity with diffusers' AutoencoderKLWan on tiny random configs, in all three file layouts.

Tolerance: max |ours - ref| <= 1e-5 * max |ref| (fp32, CPU).
"""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from layert2v_core import load_vae
from layert2v_core.vae import WanVAE, VAEConfig
from layert2v_core.vae_tiling import Tiling
from layert2v_core.weights import CheckpointError

# diffusers is the test-only reference (requirements-dev.txt): without it this module fails, it is not skipped.
from diffusers import AutoencoderKLWan  # noqa: E402

RTOL = 1e-5

CONFIGS = {
    # z_dim 4: our loader normalises with mean 0 / std 1.
    "z4_wan_layout": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                          temperal_downsample=[False, True, True]),
    # z_dim 16: the real Wan2.1 latent statistics; other channel multipliers and temporal pattern.
    "z16_other": dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 3], num_res_blocks=1,
                      temperal_downsample=[True, True, False]),
}


def _random_reference(cfg: dict) -> AutoencoderKLWan:
    torch.manual_seed(1)
    ref = AutoencoderKLWan(**cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn_like(p))  # non-trivial norms so a misplaced gamma shows
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.mul_(1.5)  # default init, slightly louder so signals survive the tiny widths
    return ref


def _to_original_layout(state: dict, num_res_blocks: int) -> dict:
    """diffusers keys -> original Wan keys, written for the test and checked against diffusers' own converter."""
    stage = num_res_blocks + 2
    out = {}
    for key, value in state.items():
        k = key
        k = re.sub(r"^quant_conv\.", "conv1.", k)
        k = re.sub(r"^post_quant_conv\.", "conv2.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", k)
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.head.0.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", k)
        k = re.sub(r"^encoder\.down_blocks\.", "encoder.downsamples.", k)
        k = re.sub(r"mid_block\.resnets\.0\.", "middle.0.", k)
        k = re.sub(r"mid_block\.attentions\.0\.", "middle.1.", k)
        k = re.sub(r"mid_block\.resnets\.1\.", "middle.2.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda m: f"decoder.upsamples.{int(m[1]) * stage + int(m[2])}.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.upsamples.{int(m[1]) * stage + stage - 1}.", k)
        for old, new in (("norm1", "residual.0"), ("conv1", "residual.2"), ("norm2", "residual.3"),
                         ("conv2", "residual.6"), ("conv_shortcut", "shortcut")):
            k = re.sub(rf"^((?:encoder|decoder)\.(?:downsamples|upsamples|middle)\.\d+\.){old}\.", rf"\g<1>{new}.", k)
        out[k] = value
    return out


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference_and_files(request, tmp_path_factory):
    name = request.param
    cfg = CONFIGS[name]
    ref = _random_reference(cfg)
    root = tmp_path_factory.mktemp(name)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    original = _to_original_layout(state, cfg["num_res_blocks"])
    files = {}
    files["pth"] = root / "Wan2.1_VAE.pth"
    torch.save(original, files["pth"])
    files["comfy"] = root / "wan_2.1_vae.safetensors"
    save_file(original, str(files["comfy"]))
    files["diffusers_dir"] = root / "vae"
    ref.save_pretrained(files["diffusers_dir"])
    files["diffusers_file"] = files["diffusers_dir"] / "diffusion_pytorch_model.safetensors"
    return name, cfg, ref, original, files


@pytest.fixture(scope="module")
def reference_outputs(reference_and_files):
    """diffusers' encode mean and decode on one video / latent, computed once per config."""
    _, cfg, ref, _, _ = reference_and_files
    torch.manual_seed(2)
    video = torch.rand(1, 3, 9, 24, 16) * 2 - 1  # 3 latent frames: the streaming caches carry over twice
    latent = torch.randn(1, cfg["z_dim"], 3, 3, 2)
    mean, std = _stats(cfg)
    with torch.no_grad():
        ref_latent = (ref.encode(video).latent_dist.mean - mean) / std
        ref_video = ref.decode(latent * std + mean).sample
    return video, ref_latent, latent, ref_video


def test_original_layout_matches_diffusers_converter(reference_and_files):
    """The test's original-layout file is what diffusers itself converts back to its own layout."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    _, cfg, ref, original, _ = reference_and_files
    if cfg["num_res_blocks"] != 2:
        pytest.skip("diffusers' converter hard-codes the real model's 2 residual blocks per stage")
    back = convert_wan_vae_to_diffusers(dict(original))
    own = ref.state_dict()
    assert set(back) == set(own)
    assert all(torch.equal(back[k], own[k]) for k in own)


def _stats(cfg):
    """The reference's latent normalisation: diffusers' own Wan2.1 values (its AutoencoderKLWan defaults)."""
    z = cfg["z_dim"]
    if z == 16:
        reference = AutoencoderKLWan(base_dim=8, z_dim=16, num_res_blocks=1).config
        return (torch.tensor(reference.latents_mean).view(1, z, 1, 1, 1),
                torch.tensor(reference.latents_std).view(1, z, 1, 1, 1))
    return torch.zeros(1, z, 1, 1, 1), torch.ones(1, z, 1, 1, 1)


def _max_rel(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("layout", ["pth", "comfy", "diffusers_dir", "diffusers_file"])
def test_encode_decode_parity(reference_and_files, reference_outputs, layout):
    name, cfg, _, _, files = reference_and_files
    video, ref_latent, latent, ref_video = reference_outputs
    vae = load_vae(files[layout])
    assert vae.config.z_dim == cfg["z_dim"] and vae.config.dim == cfg["base_dim"]
    assert list(vae.config.dim_mult) == cfg["dim_mult"]
    assert list(vae.config.temporal_downsample) == cfg["temperal_downsample"]
    with torch.no_grad():
        ours = vae.encode(video)
        ours_video = vae.decode(latent)
    assert ours.shape == ref_latent.shape == (1, cfg["z_dim"], 3, 3, 2)
    err = _max_rel(ours, ref_latent)
    print(f"{name}/{layout}: encode max|diff|/max|ref| = {err:.2e}")
    assert err <= RTOL, f"{name}/{layout}: encode rel err {err:.2e}"

    assert ours_video.shape == ref_video.shape == (1, 3, 9, 24, 16)
    saturated = (ref_video.abs() >= 1).float().mean().item()
    assert saturated < 0.5, "reference output mostly clamped; the comparison would be weak"
    err = _max_rel(ours_video, ref_video)
    print(f"{name}/{layout}: decode max|diff|/max|ref| = {err:.2e} (clamped fraction {saturated:.2f})")
    assert err <= RTOL, f"{name}/{layout}: decode rel err {err:.2e}"


def test_dtype_and_device_arguments(reference_and_files):
    _, cfg, _, _, files = reference_and_files
    vae = load_vae(files["pth"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in vae.parameters())
    assert not any(p.requires_grad for p in vae.parameters())
    out = vae.decode(torch.randn(1, cfg["z_dim"], 2, 2, 2))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 5, 16, 16)


def _tiny_vae(z_dim=4, dim=8) -> WanVAE:
    torch.manual_seed(3)
    vae = WanVAE(VAEConfig(dim=dim, z_dim=z_dim, num_res_blocks=1)).eval()
    with torch.no_grad():
        for m in vae.modules():
            if hasattr(m, "proj") and isinstance(m.proj, torch.nn.Conv2d):
                torch.nn.init.normal_(m.proj.weight, std=0.05)  # make the global attention matter
    return vae


def test_bad_sizes_name_the_nearest_valid_ones():
    vae = _tiny_vae()
    with pytest.raises(ValueError, match=r"10 frames.*9 or 13"):
        vae.encode(torch.zeros(1, 3, 10, 16, 16))
    with pytest.raises(ValueError, match=r"height 30.*24 or 32"):
        vae.encode(torch.zeros(1, 3, 9, 30, 16))
    with pytest.raises(ValueError, match=r"\[batch, 3, frames"):
        vae.encode(torch.zeros(1, 4, 9, 16, 16))
    with pytest.raises(ValueError, match=r"\[batch, 4, frames"):
        vae.decode(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(ValueError, match="tile size"):
        vae.decode(torch.zeros(1, 4, 2, 2, 2), tile=(20, 8))
    with pytest.raises(ValueError, match="overlap"):
        vae.decode(torch.zeros(1, 4, 2, 2, 2), tile=(32, 32))


def test_loader_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, str(junk))
    with pytest.raises(CheckpointError, match="not a Wan2.1 VAE"):
        load_vae(junk)
    wan22 = tmp_path / "wan2.2_vae.safetensors"
    save_file({"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1),
               "decoder.upsamples.0.upsamples.0.residual.2.weight": torch.zeros(1)}, str(wan22))
    with pytest.raises(CheckpointError, match="Wan2.2"):
        load_vae(wan22)
    state = {k: v for k, v in _tiny_vae().state_dict().items() if k != "decoder.head.2.bias"}
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    with pytest.raises(CheckpointError, match=r"missing.*decoder\.head\.2\.bias"):
        load_vae(partial)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "nope.pth")


def test_prefixed_checkpoint_loads(tmp_path):
    vae = _tiny_vae()
    bundled = {"first_stage_model." + k: v for k, v in vae.state_dict().items()}
    bundled["model.diffusion_model.head.modulation"] = torch.zeros(1, 2, 4)
    path = tmp_path / "bundle.safetensors"
    save_file(bundled, str(path))
    loaded = load_vae(path)
    z = torch.randn(1, 4, 2, 2, 2)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), vae.decode(z))


def test_tiled_decode_close_to_untiled():
    """64 px tiles with 32 px overlap on a 96x64 frame. A tile sees neither the decoder's whole receptive field
    nor the whole frame in the middle block's global attention, so a tiny random model differs everywhere a
    little. Stated tolerance: mean |tiled - untiled| <= 0.05 x peak (measured 0.026); blending the overlap
    beats butt-jointed tiles; a single tile covering the frame is exact."""
    vae = _tiny_vae()
    torch.manual_seed(4)
    latent = torch.randn(1, 4, 2, 12, 8)
    with torch.no_grad():
        full = vae.decode(latent, clamp=False)
        tiled = vae.decode(latent, tile=Tiling(64, 32), clamp=False)
        butt = vae.decode(latent, tile=Tiling(48, 0), clamp=False)
        blended = vae.decode(latent, tile=Tiling(48, 16), clamp=False)
        single = vae.decode(latent, tile=Tiling(96, 32), clamp=False)
    peak = full.abs().max()
    assert tiled.shape == full.shape
    assert (tiled - full).abs().mean() / peak <= 0.05
    assert (blended - full).abs().mean() < (butt - full).abs().mean()
    assert torch.equal(single, full)


def test_tiled_encode_close_to_untiled():
    """32 px tiles (4 latent cells) with 16 px overlap on 64x48: a coarse approximation on a tiny random model;
    stated tolerance mean |tiled - untiled| <= 0.2 x peak (measured 0.109); one covering tile is exact."""
    vae = _tiny_vae()
    torch.manual_seed(5)
    video = torch.rand(1, 3, 5, 64, 48) * 2 - 1
    with torch.no_grad():
        full = vae.encode(video)
        tiled = vae.encode(video, tile=(32, 16))
        single = vae.encode(video, tile=(64, 16))
    assert tiled.shape == full.shape
    assert torch.equal(single, full)
    assert ((tiled - full).abs().mean() / full.abs().max()) <= 0.2


def _decode_peak_bytes(vae: WanVAE, latent: torch.Tensor, trace_path) -> tuple[int, int]:
    """Peak tensor memory of one decode, from the torch profiler's CPU allocation record; and the output size."""
    import json
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = vae.decode(latent)
    prof.export_chrome_trace(str(trace_path))
    events = json.loads(trace_path.read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]"]
    base = memory[0]["Total Allocated"] - memory[0]["Bytes"]  # allocated before the first recorded event
    return max(m["Total Allocated"] for m in memory) - base, out.numel() * out.element_size()


def test_streaming_peak_does_not_grow_with_length(tmp_path):
    """Peak allocated tensor memory (torch profiler, CPU) of a 128x128 decode, minus its output buffer: 2 vs 6
    latent frames. Streaming keeps it flat (allowed +10%); holding every frame's activations would ~3x it."""
    vae = _tiny_vae()
    short_peak, short_out = _decode_peak_bytes(vae, torch.randn(1, 4, 2, 16, 16), tmp_path / "short.json")
    long_peak, long_out = _decode_peak_bytes(vae, torch.randn(1, 4, 6, 16, 16), tmp_path / "long.json")
    print(f"decode working memory: 2 latent frames {(short_peak - short_out) / 2**20:.1f} MiB, "
          f"6 latent frames {(long_peak - long_out) / 2**20:.1f} MiB")
    assert long_peak - long_out <= 1.1 * (short_peak - short_out)


def test_upsample_conv_is_nearest_upsampling_then_conv():
    # Known answer in float64: the four 2x2 phase kernels sum exactly the 3x3 taps that land on one input pixel.
    from layert2v_core.vae import upsample2x_conv
    g = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64),
                       torch.randn(3, 5, 3, 3, generator=g, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    expected = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"),
                                          weight, bias, padding=1)
    assert torch.allclose(upsample2x_conv(x, weight, bias), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("frames", [1, 2])
def test_first_chunk_skips_the_taps_on_front_zeros(frames):
    # A one-output chunk skips the kernel taps over the front zero padding; a longer one pads as before.
    from layert2v_core.vae import CausalConv3d
    torch.manual_seed(0)
    conv = CausalConv3d(4, 3, 3, padding=1).double()
    x = torch.randn(1, 4, frames, 5, 5, dtype=torch.float64)
    expected = torch.nn.functional.conv3d(torch.nn.functional.pad(x, (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias)
    padded, first_tap = conv.pad(x, {})
    assert first_tap == (2 if frames == 1 else 0)
    assert torch.allclose(conv(x, {}), expected, rtol=0, atol=1e-12)
