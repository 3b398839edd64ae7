"""Core pieces added for the node pack: prompt packing, partial schedules, start latents, offload, backgrounds."""
import pytest
import torch

from layert2v_core.composite import fit_background
from layert2v_core.dit import WanDiT
from layert2v_core.layers import LayerSpec
from layert2v_core.offload import blocks_on_demand
from layert2v_core.sampling import (denoiser_from_velocity, flow_sigmas, partial_flow_sigmas, sample, seeded_noise,
                                    solver_sigmas)
from layert2v_core.text import WAN_NEGATIVE_PROMPT, negative_prompt, pack_layer_contexts
from train.tiny_models import tiny_dit_config


def test_pack_layer_contexts_layout():
    spec = LayerSpec(2)
    positive = [torch.full((n, 4), float(i + 1)) for i, n in enumerate((3, 2, 4, 1))]
    negative = torch.full((2, 4), -1.0)
    packed = pack_layer_contexts(spec, ("a", "b", "c", "d"), positive, "neg", negative)
    assert packed.context.shape == (1, 512, 4) and packed.prompt_lens.tolist() == [[3, 2, 4, 1]]
    assert torch.equal(packed.context[0, :10], torch.cat(positive)) and not packed.context[0, 10:].any()
    assert packed.negative_prompt_lens.tolist() == [[2, 2, 2, 2]]
    assert torch.equal(packed.negative_context[0, :8], negative.repeat(4, 1))
    with pytest.raises(ValueError, match="expected 4 prompt embeddings"):
        pack_layer_contexts(spec, ("a", "b", "c"), positive[:3], "neg", negative)
    assert negative_prompt("  ") == WAN_NEGATIVE_PROMPT and negative_prompt("blur") == "blur"


def test_partial_flow_sigmas():
    assert torch.equal(partial_flow_sigmas(6, 5.0, 1.0), flow_sigmas(6, 5.0))
    assert torch.equal(partial_flow_sigmas(4, 3.0, 0.5), flow_sigmas(8, 3.0)[-5:])
    with pytest.raises(ValueError, match="denoise must be"):
        partial_flow_sigmas(4, 3.0, 0.0)


def test_solver_sigmas_moves_a_first_sigma_of_one_below_one():
    sig = solver_sigmas(torch.tensor([1.0, 0.5, 0.0]), "unipc")
    assert 0.5 < sig[0] < 1.0 and sig[1:].tolist() == [0.5, 0.0]
    assert solver_sigmas([1.0, 0.5, 0.0], "euler").tolist() == [1.0, 0.5, 0.0]


def test_sample_from_a_start_latent_follows_the_exact_velocity_home():
    target = torch.randn(1, 2, 3, 4, 4)
    noise = seeded_noise(target.shape, 5)
    out = sample(lambda x, s: noise - target, noise, partial_flow_sigmas(3, 2.0, 0.5), "euler", start=target)
    assert torch.allclose(out, target, atol=1e-5)
    with pytest.raises(ValueError, match="start latent must have"):
        sample(lambda x, s: x, noise, flow_sigmas(2), "euler", start=target[:, :1])


def test_denoiser_from_velocity():
    x = torch.randn(2, 3)
    denoise = denoiser_from_velocity(lambda x, s: torch.full_like(x, s))
    assert torch.allclose(denoise(x, torch.tensor([0.25, 0.25])), x - 0.25 * 0.25)


def test_blocks_on_demand_gives_the_same_output_and_cleans_up():
    dit = WanDiT(tiny_dit_config()).eval()
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, 32)
    with torch.no_grad():
        expected = dit(x, t, ctx)
        with blocks_on_demand(dit, dit.blocks, "cpu", "cpu"):
            assert all(len(b._forward_pre_hooks) == 1 for b in dit.blocks)
            got = dit(x, t, ctx)
    assert torch.equal(got, expected)
    assert all(len(b._forward_pre_hooks) == 0 and len(b._forward_hooks) == 0 for b in dit.blocks)


def test_fit_background():
    still = torch.rand(3, 1, 8, 8)
    held = fit_background(still, 5, 8, 8)
    assert held.shape == (3, 5, 8, 8) and torch.equal(held[:, 4], still[:, 0])
    assert fit_background(torch.rand(3, 5, 4, 6), 5, 8, 12).shape == (3, 5, 8, 12)
    with pytest.raises(ValueError, match="has 3 frames but the layers have 5"):
        fit_background(torch.rand(3, 3, 8, 8), 5, 8, 8)
