"""Training losses on cases whose answer is known."""
import pytest
import torch

from layert2v_core.composite import recompose
from train.losses import (consistency_loss, downsample_mask, edge_loss, flow_matching_loss, gradient_loss,
                          mask_reconstruction_loss, ms_ssim_loss, noisy_latent, predicted_x0, sample_sigmas)


def test_flow_matching_is_zero_for_the_true_velocity_and_x0_is_recovered():
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    sigma = torch.tensor([0.3, 0.9])
    z = noisy_latent(x0, noise, sigma)
    assert flow_matching_loss(noise - x0, x0, noise) == 0
    assert torch.allclose(predicted_x0(z, noise - x0, sigma), x0, atol=1e-6)
    assert flow_matching_loss(torch.zeros_like(x0), x0, noise) == pytest.approx(((noise - x0) ** 2).mean().item())


def test_weighted_flow_matching_is_the_weighted_mean_of_the_squared_errors():
    x0, noise, velocity = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    plain = flow_matching_loss(velocity, x0, noise)
    assert torch.allclose(flow_matching_loss(velocity, x0, noise, torch.full((2, 1, 3, 2, 2), 7.0)), plain, atol=1e-6)
    region = torch.zeros(2, 1, 3, 2, 2)
    region[0, :, 1, 0, 1] = 1  # one latent position of one sample: the loss is its error alone
    error = (velocity - (noise - x0))[0, :, 1, 0, 1] ** 2
    assert torch.allclose(flow_matching_loss(velocity, x0, noise, region), error.mean(), atol=1e-6)


def test_sigmas_are_logit_normal():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(20000, g, mean=0.5, std=1.0)
    assert 0 < s.min() and s.max() < 1
    logits = torch.log(s / (1 - s))
    assert logits.mean() == pytest.approx(0.5, abs=0.03) and logits.std() == pytest.approx(1.0, abs=0.03)


def test_default_t_sampling_is_the_official_trainers():
    """The default draws t as the official trainer does, sigmoid(N(0, 1)): over 100k draws mean and median 0.5
    (measured 0.4996 / 0.4999; t_mean 0.5 gave 0.601 / 0.621), quantiles as the reference draws' within 0.01."""
    from train.config import TrainConfig

    cfg = TrainConfig()
    ours = sample_sigmas(100_000, torch.Generator().manual_seed(0), cfg.t_mean, cfg.t_std, cfg.t_shift)
    official = torch.sigmoid(torch.randn(100_000, generator=torch.Generator().manual_seed(1)))
    assert ours.mean() == pytest.approx(0.5, abs=0.005) and ours.median() == pytest.approx(0.5, abs=0.005)
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    assert torch.allclose(ours.quantile(q), official.quantile(q), atol=0.01)


def test_consistency_is_zero_for_exactly_composed_latents():
    g = torch.Generator().manual_seed(1)
    bg = torch.randn(2, 16, 3, 4, 4, generator=g)
    fgs = [torch.randn(2, 16, 3, 4, 4, generator=g) for _ in range(2)]
    alphas = [torch.rand(2, 1, 3, 4, 4, generator=g) for _ in range(2)]
    full = fgs[1] + (fgs[0] + bg * (1 - alphas[0])) * (1 - alphas[1])
    assert consistency_loss(fgs, bg, full, alphas).item() == pytest.approx(0, abs=1e-10)
    assert torch.allclose(recompose(bg, fgs, alphas), full)
    assert consistency_loss(fgs, bg, full + 0.5, alphas).item() == pytest.approx(0.25, rel=1e-5)


def test_downsample_mask_packs_time_like_the_vae():
    alpha = torch.zeros(1, 1, 9, 16, 16)
    alpha[:, :, 0] = 1.0          # first frame alone -> latent frame 0
    alpha[:, :, 1:3] = 1.0        # half of the first group of 4 -> latent frame 1 = 0.5
    alpha[:, :, 5:9, :8] = 1.0    # top half of the second group -> latent frame 2 top rows 1, bottom 0
    small = downsample_mask(alpha, 3, 2, 2)
    assert small.shape == (1, 1, 3, 2, 2)
    assert torch.allclose(small[0, 0, 0], torch.ones(2, 2))
    assert torch.allclose(small[0, 0, 1], torch.full((2, 2), 0.5))
    assert torch.allclose(small[0, 0, 2], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="packs into 3 latent frames"):
        downsample_mask(alpha, 4, 2, 2)


def test_edge_and_gradient_losses_see_edges_not_flat_offsets():
    square = torch.zeros(1, 1, 2, 16, 16)
    square[..., 4:12, 4:12] = 1
    assert edge_loss(square, square) < 1e-3 and gradient_loss(square, square) == 0
    assert gradient_loss(square + 0.3, square) < 1e-6  # a flat offset has no edges
    blurred = torch.nn.functional.avg_pool3d(square, (1, 3, 3), stride=1, padding=(0, 1, 1))
    assert edge_loss(blurred, square) > 0.05 and gradient_loss(blurred, square) > 0.01


def test_ms_ssim_is_zero_for_identical_and_grows_with_noise():
    g = torch.Generator().manual_seed(2)
    video = torch.rand(1, 1, 2, 32, 32, generator=g)
    assert ms_ssim_loss(video, video) == pytest.approx(0, abs=1e-5)
    a = ms_ssim_loss((video + 0.05 * torch.randn(video.shape, generator=g)).clamp(0, 1), video)
    b = ms_ssim_loss((video + 0.3 * torch.randn(video.shape, generator=g)).clamp(0, 1), video)
    assert 0 < a < b


def test_mask_reconstruction_loss():
    target = (torch.rand(1, 1, 2, 8, 8) > 0.5).float()
    assert mask_reconstruction_loss(target, target) == 0
    assert mask_reconstruction_loss(1 - target, target) > mask_reconstruction_loss(target * 0.9, target)
