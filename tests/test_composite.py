"""Compositing: straight <-> premultiplied, ordered recomposition, new backgrounds, the consistency error."""
import numpy as np
import pytest
import torch
from PIL import Image

from layert2v_core.composite import (consistency_error, over_background, premultiply, recompose, to_straight_rgba,
                                     unpremultiply)


def _layers(num_foregrounds=2, shape=(3, 4, 6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(shape, generator=g)
    foregrounds = [torch.rand(shape, generator=g) for _ in range(num_foregrounds)]
    alphas = [torch.rand(shape[:-4] + (1,) + shape[-3:], generator=g) for _ in range(num_foregrounds)]
    return background, foregrounds, alphas


def test_premultiply_round_trip_and_transparent_pixels():
    _, (rgb,), (alpha,) = _layers(1)
    alpha[..., 0, 0] = 0.0
    back = unpremultiply(premultiply(rgb, alpha), alpha)
    visible = (alpha >= 1 / 512).expand_as(rgb)
    torch.testing.assert_close(back[visible], rgb[visible], atol=1e-6, rtol=0)
    assert torch.isfinite(back).all() and (back[..., 0, 0] == 0).all()  # alpha 0: black, no NaN


def test_recompose_applies_layers_bottom_to_top():
    background = torch.zeros(3, 1, 1, 1)
    red, blue = torch.tensor([1.0, 0, 0]).view(3, 1, 1, 1), torch.tensor([0, 0, 1.0]).view(3, 1, 1, 1)
    opaque, half = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5)
    # foreground 2 (blue, half transparent) lies over foreground 1 (red, opaque).
    out = recompose(background, [red * opaque, blue * half], [opaque, half])
    torch.testing.assert_close(out.flatten(), torch.tensor([0.5, 0.0, 0.5]))
    # swapping the order puts the opaque red on top.
    out = recompose(background, [blue * half, red * opaque], [half, opaque])
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.0, 0.0]))


def test_recompose_matches_the_explicit_formula_for_three_layers():
    background, fgs, alphas = _layers(3)
    pre = [premultiply(f, a) for f, a in zip(fgs, alphas)]
    expected = background
    for f, a in zip(fgs, alphas):
        expected = f * a + expected * (1 - a)
    torch.testing.assert_close(recompose(background, pre, alphas), expected)


def test_over_background_matches_pillow_alpha_composite():
    background, (fg,), (alpha,) = _layers(1, shape=(3, 1, 8, 8))
    to_u8 = lambda t: (t * 255).round().to(torch.uint8)  # noqa: E731
    bg8, fg8, a8 = to_u8(background), to_u8(fg), to_u8(alpha)
    bg_img = Image.fromarray(torch.cat([bg8, torch.full_like(a8, 255)])[:, 0].permute(1, 2, 0).numpy(), "RGBA")
    fg_img = Image.fromarray(torch.cat([fg8, a8])[:, 0].permute(1, 2, 0).numpy(), "RGBA")
    expected = np.asarray(Image.alpha_composite(bg_img, fg_img))[..., :3].astype(np.float64) / 255
    ours = over_background(bg8 / 255.0, [fg8 / 255.0], [a8 / 255.0])[:, 0].permute(1, 2, 0).double().numpy()
    # Pillow works in 8-bit integers: agreement to one code value.
    np.testing.assert_allclose(ours, expected, atol=1 / 255 + 1e-9, rtol=0)


def test_over_background_accepts_a_solid_colour_and_batches():
    _, fgs, alphas = _layers(2, shape=(2, 3, 2, 4, 4))
    grey = torch.full((3, 1, 1, 1), 0.5)
    out = over_background(grey, fgs, alphas)
    assert out.shape == (2, 3, 2, 4, 4)
    expected = recompose(grey.expand(2, 3, 2, 4, 4), [f * a for f, a in zip(fgs, alphas)], alphas)
    torch.testing.assert_close(out, expected)


def test_consistency_error_is_zero_for_consistent_layers_and_measures_deviation():
    background, fgs, alphas = _layers(2)
    pre = [premultiply(f, a) for f, a in zip(fgs, alphas)]
    full = recompose(background, pre, alphas)
    assert consistency_error(full, background, pre, alphas).item() < 1e-7
    offset = torch.zeros_like(full)
    offset[:, 0] = 0.2  # first frame brighter by 0.2 everywhere
    error = consistency_error(full + offset, background, pre, alphas).item()
    assert error == pytest.approx(0.2 / full.shape[1], abs=1e-6)


def test_to_straight_rgba_stacks_colour_and_alpha():
    _, (rgb,), (alpha,) = _layers(1)
    alpha = alpha.clamp(min=0.1)
    rgba = to_straight_rgba(premultiply(rgb, alpha), alpha)
    assert rgba.shape == (4,) + rgb.shape[1:]
    torch.testing.assert_close(rgba[:3], rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(rgba[3:], alpha)


def test_bad_layer_stacks_are_named():
    background, fgs, alphas = _layers(2)
    with pytest.raises(ValueError, match="2 foreground.*1 alpha"):
        recompose(background, fgs, alphas[:1])
    with pytest.raises(ValueError, match="alpha 1 must have 1 channel"):
        recompose(background, fgs, [torch.rand(3, 4, 6, 5)] * 2)
    with pytest.raises(ValueError, match="do not broadcast"):
        recompose(background, fgs, [torch.rand(1, 4, 7, 5)] * 2)
    with pytest.raises(ValueError, match=r"channel-first video"):
        premultiply(torch.rand(6, 5), torch.rand(1, 6, 5))
    with pytest.raises(TypeError, match="as lists"):
        recompose(background, torch.stack(fgs), torch.stack(alphas))
