"""LayerT2V training losses (paper §3.3, appendix A).

Stage 1 (alpha VAE):  SmoothL1(Â, A) + λ_edge·edge(Â, A) + λ_perc·perceptual(Â, A)
Stage 2/3 (DiT):      L_FM + λ_cons·L_cons + λ_mask·(rec(Â, A) + λ_∇·grad(Â, A))
Videos are [B, C, T, H, W]; latents [B, C, T', H', W'].
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from layert2v_core.composite import recompose


def sample_sigmas(batch: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0,
                  shift: float = 1.0, device="cpu") -> torch.Tensor:
    """Flow-matching noise levels t = sigmoid(N(mean, std)) (optionally shifted like the sampler); mean 0 is the
    official trainer's, with t's median at 0.5."""
    t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator)).to(device)
    return shift * t / (1 + (shift - 1) * t)


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - t)·z_0 + t·z_1 along the straight path."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """‖v_θ − (z_1 − z_0)‖² averaged over elements, or their weighted mean with `weight` (broadcast to them)."""
    if weight is None:
        return F.mse_loss(velocity.float(), (noise - x0).float())
    error = (velocity.float() - (noise - x0).float()) ** 2
    weight = weight.float().expand_as(error)
    return (weight * error).sum() / weight.sum()


def predicted_x0(z_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x̂_0 = z_t − t·v."""
    return z_t - sigma.view(-1, *([1] * (z_t.dim() - 1))) * velocity


def downsample_mask(alpha: torch.Tensor, latent_frames: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """Ã: a matte [B, 1, 4k+1, H, W] averaged onto the latent grid the way the causal VAE packs time
    (the first frame alone, then groups of 4) and space (areas)."""
    first, rest = alpha[:, :, :1], alpha[:, :, 1:]
    if rest.shape[2]:
        b, c, t, h, w = rest.shape
        rest = rest.reshape(b, c, t // 4, 4, h, w).mean(3)
    packed = torch.cat([first, rest], dim=2)
    if packed.shape[2] != latent_frames:
        raise ValueError(f"a {alpha.shape[2]}-frame matte packs into {packed.shape[2]} latent frames, the latent "
                         f"has {latent_frames}")
    return F.adaptive_avg_pool3d(packed, (latent_frames, latent_height, latent_width))


def consistency_loss(fg_latents: Sequence[torch.Tensor], bg_latent: torch.Tensor, full_latent: torch.Tensor,
                     latent_alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖ẑ_fg + ẑ_bg ⊙ (1 − Ã) − z_full‖², foregrounds composed in order (fg_1 at the bottom) for N > 1."""
    composed = recompose(bg_latent, list(fg_latents), list(latent_alphas))
    return F.mse_loss(composed.float(), full_latent.float())


def image_gradients(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along height and width of [B, C, T, H, W]."""
    return video[..., 1:, :] - video[..., :-1, :], video[..., :, 1:] - video[..., :, :-1]


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between spatial gradients: penalises soft or misplaced edges."""
    (py, px), (ty, tx) = image_gradients(pred.float()), image_gradients(target.float())
    return F.l1_loss(py, ty) + F.l1_loss(px, tx)


def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sobel edge magnitude L1 (stage 1's boundary term), per frame."""
    kernel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=pred.device)

    def magnitude(video: torch.Tensor) -> torch.Tensor:
        frames = video.float().transpose(1, 2).flatten(0, 1)  # [B*T, C, H, W]
        c = frames.shape[1]
        kx = kernel.expand(c, 1, 3, 3)
        ky = kernel.t().expand(c, 1, 3, 3)
        gx = F.conv2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), kx, groups=c)
        gy = F.conv2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), ky, groups=c)
        return torch.sqrt(gx ** 2 + gy ** 2 + 1e-6)
    return F.l1_loss(magnitude(pred), magnitude(target))


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity of two [N, C, H, W] batches with a uniform window."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (pad,) * 4, mode="reflect"), window, stride=1)
    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p ** 2
    var_t = blur(target * target) - mu_t ** 2
    cov = blur(pred * target) - mu_p * mu_t
    score = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return score.mean()


def ms_ssim_loss(pred: torch.Tensor, target: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """1 − multi-scale SSIM over the frames of [B, C, T, H, W]: the structural stand-in for a perceptual loss
    when no pretrained feature network is available."""
    p = pred.float().transpose(1, 2).flatten(0, 1)
    t = target.float().transpose(1, 2).flatten(0, 1)
    losses = []
    for _ in range(scales):
        losses.append(1 - ssim(p, t))
        if min(p.shape[-2:]) < 16:
            break
        p, t = F.avg_pool2d(p, 2), F.avg_pool2d(t, 2)
    return torch.stack(losses).mean()


def mask_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, grad_weight: float = 0.1) -> torch.Tensor:
    """L_mask = SmoothL1(Â, A) + λ_∇·grad(Â, A)."""
    return F.smooth_l1_loss(pred.float(), target.float()) + grad_weight * gradient_loss(pred, target)
