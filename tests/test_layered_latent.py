"""Layered samples <-> serialized latents: segment order from LayerSpec, premultiplication, mask VAE routing."""
from __future__ import annotations

import pytest
import torch

from layert2v_core import LayerSpec, MaskVAE, decode_layers, encode_layers
from layert2v_core.layered_latent import premultiply, unpremultiply
from layert2v_core.mask_vae import MaskVAEConfig
from layert2v_core.vae import VAEConfig, WanVAE


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(21)
    vae = WanVAE(VAEConfig(dim=8, z_dim=4, num_res_blocks=1)).eval().requires_grad_(False)
    mask_vae = MaskVAE(vae, MaskVAEConfig(lora_rank=2, lora_alpha=2.0, proj_hidden=8, proj_res_blocks=1))
    with torch.no_grad():  # non-identity adapters, so the test sees which VAE handled which segment
        mask_vae.head.gate.fill_(0.5)
        for p in mask_vae.trainable_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
    return vae, mask_vae


def _sample(num_fg: int, with_fg_colour: bool):
    torch.manual_seed(22)
    shape = (1, 3, 5, 16, 16)
    layers = {"full": torch.rand(shape) * 2 - 1, "bg": torch.rand(shape) * 2 - 1}
    for i in range(1, num_fg + 1):
        layers[f"mask{i}"] = torch.rand(1, 1, 5, 16, 16)
        if with_fg_colour:
            layers[f"fg{i}"] = torch.rand(shape) * 2 - 1
    return layers


@pytest.mark.parametrize("num_fg,with_fg_colour", [(1, False), (2, True)])
def test_encode_layers_serializes_each_segment(models, num_fg, with_fg_colour):
    vae, mask_vae = models
    spec = LayerSpec(num_fg)
    layers = _sample(num_fg, with_fg_colour)
    with torch.no_grad():
        latent = encode_layers(vae, mask_vae, spec, layers)
        assert latent.shape == (1, 4, 2 * spec.num_segments, 2, 2)
        parts = spec.split(latent)
        assert torch.equal(parts["full"], vae.encode(layers["full"]))
        assert torch.equal(parts["bg"], vae.encode(layers["bg"]))
        for i in range(1, num_fg + 1):
            alpha = layers[f"mask{i}"]
            colour = layers[f"fg{i}"] if with_fg_colour else layers["full"]
            assert torch.equal(parts[f"fg{i}"], vae.encode(premultiply(colour, alpha)))
            assert torch.equal(parts[f"mask{i}"], mask_vae.encode(alpha))


def test_decode_layers_routes_masks_to_the_mask_vae(models):
    vae, mask_vae = models
    spec = LayerSpec(2)
    torch.manual_seed(23)
    latent = torch.randn(1, 4, 2 * spec.num_segments, 2, 2)
    with torch.no_grad():
        out = decode_layers(vae, mask_vae, spec, latent)
        parts = spec.split(latent)
        assert list(out) == list(spec.segments)
        for name, video in out.items():
            if spec.kind(name) == "mask":
                assert video.shape == (1, 1, 5, 16, 16) and 0 <= video.min() and video.max() <= 1
                assert torch.equal(video, mask_vae.decode(parts[name]))
            else:
                assert video.shape == (1, 3, 5, 16, 16)
                assert torch.equal(video, vae.decode(parts[name]))


def test_premultiply_round_trip_and_black_transparency():
    rgb = torch.rand(1, 3, 1, 4, 4) * 2 - 1
    alpha = torch.rand(1, 1, 1, 4, 4) * 0.9 + 0.1
    alpha[..., 0, 0] = 0
    pm = premultiply(rgb, alpha)
    assert torch.all(pm[..., 0, 0] == -1)
    back = unpremultiply(pm, alpha)
    assert torch.allclose(back[..., 1:, :], rgb[..., 1:, :], atol=1e-5)


def test_bad_layers_are_named(models):
    vae, mask_vae = models
    layers = _sample(1, False)
    del layers["mask1"]
    with pytest.raises(ValueError, match=r"missing \['mask1'\]"):
        encode_layers(vae, mask_vae, LayerSpec(1), layers)
    layers = _sample(1, False)
    layers["bg"] = layers["bg"][:, :, :3]
    with pytest.raises(ValueError, match="layer 'bg'"):
        encode_layers(vae, mask_vae, LayerSpec(1), layers)
