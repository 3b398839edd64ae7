"""End-to-end numerics against references written here, not against the code under test.

The sampling references are loops over diffusers' flow schedulers that call the DiT forward twice per step (negative,
then positive prompts) with timestep sigma * 1000; the contexts are packed by hand in the documented order
[full | fg_1 .. fg_N | bg]; segments are cut from the latent by index in the documented order
[full, bg, fg_1, mask_1, ...]. A pipeline or node that swaps the guidance, scales the timestep, drops the shift,
routes a layer to the wrong prompt or keeps the wrong segment differs from these loops by orders of magnitude more
than the tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from layert2v_core.layers import LayerSpec
from layert2v_core.checkpoints import load_dit
from layert2v_core.mask_vae import load_mask_vae
from layert2v_core.pipeline import LayerT2VPipeline
from layert2v_core.text import load_text_encoder
from layert2v_core.vae import load_vae

FRAMES, HEIGHT, WIDTH = 5, 32, 32
LATENT_FRAMES = 2  # (5 - 1) / 4 + 1
# Segment positions along latent time, as the README documents the layout.
SEGMENT_INDEX = {"full": 0, "bg": 1, "fg1": 2, "mask1": 3, "fg2": 4, "mask2": 5}
# Wan2.1's flow schedule: sigma_max = 1 - 1/1000 (num_train_timesteps), sigma_min = 0; timestep = sigma * 1000.
WAN_SIGMA_MAX, NUM_TRAIN_TIMESTEPS = 0.999, 1000
PROMPTS = dict(prompt="a red circle and a blue square over a field", background="a green field",
               foregrounds=["a red circle", "a blue square"], negative="blurry noise")
# Measured on latents of scale ~5: the pipeline matches the reference loop to 2.6e-6 (euler, 3 steps; 2.1e-6 with a
# kept background) and the node to 3.0e-6 (unipc, 4 steps): float32 rounding of one batched [uncond, cond] forward
# against two separate ones. Decoded layers: 1.6e-6 (full, background, alpha), 5.3e-6 (unpremultiplied colour).
SAMPLE_ATOL = 6e-6
DECODED_ATOL = 4e-6
COLOUR_ATOL = 1.2e-5


@pytest.fixture(scope="module")
def pipe(comfy_folders):
    """The pipeline on the node tests' tiny two-foreground parts (written once per session)."""
    from workflows.build import ADAPTER, ALPHA_VAE, DIT, TEXT_ENCODER, VAE
    models, _ = comfy_folders
    vae = load_vae(models / "vae" / VAE)
    pipe = LayerT2VPipeline(load_dit(models / "diffusion_models" / DIT, adapter=models / "layert2v" / ADAPTER), vae,
                            load_mask_vae(vae, models / "layert2v" / ALPHA_VAE),
                            load_text_encoder(models / "text_encoders" / TEXT_ENCODER))
    # Distinct LayerAdaLN rows, so a segment modulated with another segment's row changes the result.
    with torch.no_grad():
        pipe.dit.layer_adaln.layer_modulation.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    return pipe


def _segment(latent: torch.Tensor, name: str) -> torch.Tensor:
    k = SEGMENT_INDEX[name]
    return latent[:, :, k * LATENT_FRAMES:(k + 1) * LATENT_FRAMES]


def hand_packed_context(encoder, prompt, background, foregrounds, negative):
    """(context, lens, negative context, negative lens): real tokens back to back in [full, fg_1.., bg] order."""
    positive = encoder.encode_tokens([prompt, *foregrounds, background])
    (negative_tokens,) = encoder.encode_tokens([negative])
    context = torch.cat(positive)[None]
    lens = torch.tensor([[len(p) for p in positive]])
    negative_context = torch.cat([negative_tokens] * len(positive))[None]
    negative_lens = torch.tensor([[len(negative_tokens)] * len(positive)])
    return context, lens, negative_context, negative_lens


def reference_sample(dit, spec, texts, noise, scheduler, guidance, kept=None):
    """The flow ODE with `scheduler`, guided by uncond + g * (cond - uncond) from two DiT forwards per step.

    kept: {segment name: latent} held on (1 - sigma) * latent + sigma * noise (diffusers' own inpainting rule).
    """
    context, lens, negative_context, negative_lens = texts
    sigmas = scheduler.sigmas.double()

    def hold(x, sigma):
        for name, latent in (kept or {}).items():
            _segment(x, name).copy_((1 - sigma) * latent + sigma * _segment(noise, name))
        return x

    x = hold(noise.clone(), sigmas[0].item())
    scheduler.set_begin_index(0)
    for i, timestep in enumerate(scheduler.timesteps):
        t = torch.full((1,), sigmas[i].item() * NUM_TRAIN_TIMESTEPS)
        with torch.no_grad():
            v_uncond = dit(x, t, negative_context, layer_spec=spec, prompt_lens=negative_lens)
            v_cond = dit(x, t, context, layer_spec=spec, prompt_lens=lens)
        x = scheduler.step(v_uncond + guidance * (v_cond - v_uncond), timestep, x, return_dict=False)[0]
        x = hold(x, sigmas[i + 1].item())
    return x


def euler_scheduler(steps: int, shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(WAN_SIGMA_MAX, 0.0, steps + 1)[:-1])  # diffusers applies the shift
    return scheduler


def unipc_scheduler(steps: int, shift: float):
    from diffusers import UniPCMultistepScheduler
    unshifted = np.linspace(WAN_SIGMA_MAX, 0.0, steps + 1)[:-1]
    scheduler = UniPCMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=1.0, solver_order=2, solver_type="bh2",
                                        predict_x0=True, lower_order_final=True)
    scheduler.set_timesteps(sigmas=shift * unshifted / (1 + (shift - 1) * unshifted))
    return scheduler


def noise_for(seed: int, num_segments: int) -> torch.Tensor:
    shape = (1, 16, num_segments * LATENT_FRAMES, HEIGHT // 8, WIDTH // 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _assert_close(got, expected, atol=SAMPLE_ATOL):
    error = (got - expected).abs().max().item()
    assert error <= atol, f"max |difference| {error:.3g} > {atol:.1g} (reference scale {expected.abs().max():.3g})"


# ---------------------------------------------------------------- the pipeline


def test_pipeline_sample_equals_a_diffusers_euler_loop(pipe):
    steps, shift, guidance, seed = 3, 3.0, 4.0, 7
    out = pipe(**PROMPTS, frames=FRAMES, height=HEIGHT, width=WIDTH, steps=steps, guidance=guidance, shift=shift,
               solver="euler", seed=seed)
    texts = hand_packed_context(pipe.text_encoder, *PROMPTS.values())
    expected = reference_sample(pipe.dit, LayerSpec(2, pipe.dit.config.routing_policy), texts, noise_for(seed, 6),
                                euler_scheduler(steps, shift), guidance)
    _assert_close(out.latent[None], expected)

    # The decoded layers are the VAEs' output of the right segments; foregrounds unpremultiplied by hand.
    with torch.no_grad():
        full = ((pipe.vae.decode(_segment(expected, "full")) + 1) / 2).clamp(0, 1)[0]
        background = ((pipe.vae.decode(_segment(expected, "bg")) + 1) / 2).clamp(0, 1)[0]
        for i in (1, 2):
            alpha = pipe.mask_vae.decode(_segment(expected, f"mask{i}"))[0]
            premultiplied = ((pipe.vae.decode(_segment(expected, f"fg{i}")) + 1) / 2).clamp(0, 1)[0]
            visible = alpha >= 1 / 512
            straight = torch.where(visible, premultiplied / alpha.clamp_min(1 / 512), 0.0).clamp(0, 1)
            _assert_close(out.alphas[i - 1], alpha, DECODED_ATOL)
            # Division by small alphas magnifies the latent's rounding; compare where alpha carries colour.
            _assert_close(out.foregrounds[i - 1] * (alpha > 0.05), straight * (alpha > 0.05), COLOUR_ATOL)
            _assert_close(out.rgba(i)[3:], alpha, DECODED_ATOL)
    _assert_close(out.full, full, DECODED_ATOL)
    _assert_close(out.background, background, DECODED_ATOL)


def test_pipeline_kept_background_follows_the_reference_loop(pipe):
    """A kept background: held on its noised trajectory while the other segments are generated around it."""
    steps, shift, guidance, seed = 3, 3.0, 3.0, 9
    plate = torch.rand(3, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    out = pipe(**PROMPTS, frames=FRAMES, height=HEIGHT, width=WIDTH, steps=steps, guidance=guidance, shift=shift,
               solver="euler", seed=seed, keep={"bg": plate})
    with torch.no_grad():
        plate_latent = pipe.vae.encode(plate[None] * 2 - 1)
    texts = hand_packed_context(pipe.text_encoder, *PROMPTS.values())
    expected = reference_sample(pipe.dit, LayerSpec(2, pipe.dit.config.routing_policy), texts, noise_for(seed, 6),
                                euler_scheduler(steps, shift), guidance, kept={"bg": plate_latent})
    assert torch.equal(_segment(out.latent[None], "bg"), plate_latent)
    _assert_close(out.latent[None], expected)


# ---------------------------------------------------------------- the node sampler


def test_node_sampler_equals_a_diffusers_unipc_loop(comfy_folders):
    from nodes import NODE_CLASS_MAPPINGS
    from workflows.build import ADAPTER, DIT, TEXT_ENCODER

    def node(name):
        cls = NODE_CLASS_MAPPINGS[name]
        return getattr(cls(), cls.FUNCTION)

    model = node("LayerT2VModelLoader")(DIT, ADAPTER, "default", "offload between runs")[0]
    encoder = node("LayerT2VTextEncoderLoader")(TEXT_ENCODER, "default")[0]
    conditioning = node("LayerT2VTextEncode")(2, PROMPTS["prompt"], PROMPTS["background"], *PROMPTS["foregrounds"],
                                              "", PROMPTS["negative"], text_encoder=encoder)[0]
    latent = node("LayerT2VEmptyLatent")(WIDTH, HEIGHT, FRAMES, 2)[0]
    steps, shift, guidance, seed = 4, 3.0, 4.0, 5
    out = node("LayerT2VSampler")(model, conditioning, latent, seed=seed, steps=steps, cfg=guidance, shift=shift,
                                  solver="unipc", routing="checkpoint", denoise=1.0)[0]
    texts = hand_packed_context(encoder, *PROMPTS.values())
    expected = reference_sample(model.dit, LayerSpec(2, model.dit.config.routing_policy), texts, noise_for(seed, 6),
                                unipc_scheduler(steps, shift), guidance)
    _assert_close(out["samples"], expected)


# ---------------------------------------------------------------- every foreground's LayerAdaLN row


def _no_token_mixing_dit(num_foregrounds: int):
    """A tiny DiT whose self-attention outputs zero: each token's velocity depends on its own segment only."""
    from layert2v_core.dit import WanDiT
    from train.tiny_models import tiny_dit_config
    torch.manual_seed(0)
    dit = WanDiT(tiny_dit_config(32, num_foregrounds)).eval()
    with torch.no_grad():
        for block in dit.blocks:
            block.self_attn.o.weight.zero_()
            block.self_attn.o.bias.zero_()
    return dit


@pytest.mark.parametrize("num_foregrounds", [2, 3])
def test_each_layer_adaln_row_changes_only_its_own_segment(num_foregrounds):
    dit = _no_token_mixing_dit(num_foregrounds)
    spec = LayerSpec(num_foregrounds, "shared")  # every segment sees every prompt: only the rows tell them apart
    segments = 2 + 2 * num_foregrounds
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, segments * 2, 4, 4, generator=g)
    context = torch.randn(1, 3 * (num_foregrounds + 2), 32, generator=g)
    lens = torch.full((1, num_foregrounds + 2), 3)
    t = torch.tensor([700.0])
    with torch.no_grad():
        base = dit(x, t, context, layer_spec=spec, prompt_lens=lens)
        for row in range(segments):
            dit.layer_adaln.layer_modulation[row].normal_(0, 0.5, generator=g)
            changed = dit(x, t, context, layer_spec=spec, prompt_lens=lens)
            dit.layer_adaln.layer_modulation[row].zero_()
            moved = [(changed - base)[:, :, 2 * k:2 * k + 2].abs().max().item() for k in range(segments)]
            assert moved[row] > 1e-2, (row, moved)
            assert all(m == 0 for k, m in enumerate(moved) if k != row), (row, moved)


def test_extended_rows_start_as_their_sources_then_train_apart():
    """Stage 3: fg_2 / mask_2 rows are copies of fg_1 / mask_1 at first; their own segments' gradients move them."""
    dit = _no_token_mixing_dit(1)
    with torch.no_grad():
        dit.layer_adaln.layer_modulation.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    dit.extend_layer_categories(2)
    table = dit.layer_adaln.layer_modulation
    assert table.shape[0] == 6
    for row, source in ((4, 2), (5, 3)):
        assert torch.equal(table[row], table[source])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 12, 4, 4, generator=g)
    context, lens = torch.randn(1, 12, 32, generator=g), torch.full((1, 4), 3)
    target = torch.randn(1, 16, 12, 4, 4, generator=g)
    optimizer = torch.optim.SGD([table], lr=1.0)
    loss = (dit(x, torch.tensor([500.0]), context, layer_spec=LayerSpec(2), prompt_lens=lens) - target).pow(2).mean()
    loss.backward()
    optimizer.step()
    for row, source in ((4, 2), (5, 3)):
        assert (table[row] - table[source]).abs().max() > 1e-6, row


# ---------------------------------------------------------------- the alpha VAE's projection head


def test_alpha_vae_encoder_uses_its_projection_head():
    """With the decoder LoRA fixed, a different head gives a different latent and a different decoded matte."""
    from layert2v_core.mask_vae import MaskVAE, MaskVAEConfig
    from layert2v_core.vae import VAEConfig, WanVAE
    torch.manual_seed(5)
    vae = WanVAE(VAEConfig(dim=8, z_dim=16, num_res_blocks=1)).eval()
    mask_vae = MaskVAE(vae, MaskVAEConfig(lora_rank=2, lora_alpha=2, proj_hidden=8, proj_res_blocks=1,
                                          proj_use_attention=False)).eval()
    alpha = torch.rand(1, 1, 5, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        plain = vae.encode(alpha.expand(-1, 3, -1, -1, -1) * 2 - 1)
        assert torch.equal(mask_vae.encode(alpha), plain)  # gate 0: the head starts as the identity
        mask_vae.head.gate.fill_(0.5)
        mask_vae.head.out_conv.weight.normal_(0, 0.3)
        head = mask_vae.head
        by_hand = plain + torch.tanh(torch.tensor(0.5)) * head.out_conv(head.blocks[0](head.in_conv(plain)))
        encoded = mask_vae.encode(alpha)
        torch.testing.assert_close(encoded, by_hand, atol=1e-5, rtol=0)
        assert (encoded - plain).abs().max() > 0.05
        assert (mask_vae.decode(encoded) - mask_vae.decode(plain)).abs().max() > 1e-4


# ---------------------------------------------------------------- constants against diffusers' config


def test_wan_latent_statistics_are_diffusers_config_values():
    import inspect

    from diffusers import AutoencoderKLWan

    from layert2v_core.vae import WAN21_LATENT_MEAN, WAN21_LATENT_STD
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert list(WAN21_LATENT_MEAN) == defaults["latents_mean"].default
    assert list(WAN21_LATENT_STD) == defaults["latents_std"].default


# ---------------------------------------------------------------- MASK polarity through the nodes, by hand


class PixelVAE(torch.nn.Module):
    """A stand-in VAE whose latent is the video itself, subsampled: every value below can be worked out by hand.

    encode: channel 0 of frames 0, 4, ... at every 8th pixel, repeated over 16 channels; decode: the first
    `channels` latent channels, each latent frame after the first held for 4 frames, pixels repeated 8 x 8.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # something for .to() and the memory checks to see

    def encode(self, video, tile=None):
        return video[:, :1, ::4, ::8, ::8].expand(-1, 16, -1, -1, -1).clone()

    def decode(self, latent, tile=None):
        z = latent[:, :self.channels]
        z = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
        return z.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)


def _pixel_vaes():
    from nodes.common import LoadedVAE
    return LoadedVAE(vae=PixelVAE(3), mask_vae=PixelVAE(1), tile=None)


def _node(name):
    from nodes import NODE_CLASS_MAPPINGS
    cls = NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)


def test_encode_layers_reads_a_comfy_mask_as_one_minus_alpha(comfy_folders):
    """Load Image gives MASK = 1 - alpha: a MASK of 0.25 is alpha 0.75, and the foreground is premultiplied by it."""
    latent = _node("LayerT2VEmptyLatent")(16, 16, FRAMES, 1)[0]
    foreground = torch.full((FRAMES, 16, 16, 3), 0.6)
    mask = torch.full((FRAMES, 16, 16), 0.25)
    kept = _node("LayerT2VEncodeLayers")(_pixel_vaes(), latent, 0.0, foreground_1=foreground, alpha_1=mask)[0]
    samples = kept["samples"]
    assert kept["layert2v"]["kept"] == ["fg1", "mask1"]
    # Segments along time: full, bg, fg1, mask1, two latent frames each.
    assert torch.allclose(samples[:, :, 6:8], torch.tensor(0.75))  # alpha = 1 - 0.25
    assert torch.allclose(samples[:, :, 4:6], torch.tensor(0.6 * 0.75 * 2 - 1))  # premultiplied, in [-1, 1]
    assert torch.equal(samples[:, :, :4], torch.zeros_like(samples[:, :, :4]))


def test_decode_layers_gives_mask_one_minus_alpha_and_rgba_alpha_itself(comfy_folders):
    """A latent whose alpha decodes to 0.8 and premultiplied colour to 0.4: MASK 0.2, RGBA alpha 0.8, colour 0.5."""
    samples = torch.zeros(1, 16, 8, 2, 2)
    samples[:, :, 0:2] = 0.2 * 2 - 1   # full 0.2
    samples[:, :, 2:4] = 0.9 * 2 - 1   # background 0.9
    samples[:, :, 4:6] = 0.4 * 2 - 1   # premultiplied foreground 0.4
    samples[:, :, 6:8] = 0.8           # alpha 0.8
    latent = {"samples": samples, "layert2v": {"num_foregrounds": 1, "frames": FRAMES, "kept": [], "strength": 0.0}}
    full, background, foreground, mask, rgba, _ = _node("LayerT2VDecodeLayers")(_pixel_vaes(), latent, 1)
    assert mask.shape == (FRAMES, 16, 16) and rgba.shape == (FRAMES, 16, 16, 4)
    assert torch.allclose(full, torch.tensor(0.2)) and torch.allclose(background, torch.tensor(0.9))
    assert torch.allclose(mask, torch.tensor(0.2))           # 1 - alpha, as Join Image with Alpha reads it
    assert torch.allclose(rgba[..., 3], torch.tensor(0.8))   # the RGBA image carries alpha itself
    assert torch.allclose(foreground, torch.tensor(0.5))     # straight colour 0.4 / 0.8
    assert torch.allclose(rgba[..., :3], torch.tensor(0.5))


# ---------------------------------------------------------------- layer files, every foreground


def test_layer_files_hold_each_foreground_with_its_own_alpha(tmp_path):
    """Two foregrounds of known colour and alpha: each RGBA file and alpha video holds its own layer's values."""
    from layert2v_core.export import save_layers
    from layert2v_core.pipeline import LayeredVideo
    from layert2v_core.video_io import read_video

    def solid(*values):
        return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, FRAMES, 16, 16).contiguous()

    layers = LayeredVideo(full=solid(0.5, 0.5, 0.5), background=solid(0.2, 0.4, 0.6),
                          foregrounds=[solid(1.0, 0.0, 0.0), solid(0.0, 0.8, 0.2)], alphas=[solid(0.6), solid(0.3)],
                          latent=torch.zeros(16, 12, 2, 2), spec=LayerSpec(2))
    save_layers(layers, tmp_path, fps=8, rgba_formats=("png",))
    for i, (colour, alpha) in enumerate((((1.0, 0.0, 0.0), 0.6), ((0.0, 0.8, 0.2), 0.3)), start=1):
        rgba = torch.from_numpy(read_video(tmp_path / f"fg{i}_rgba_png")[0])
        assert rgba.shape == (FRAMES, 16, 16, 4)
        expected = torch.tensor([*colour, alpha])
        assert (rgba - expected).abs().max() <= 0.5 / 255 + 1e-6, (i, rgba[0, 0, 0])  # 8-bit PNG rounding
        grey = torch.from_numpy(read_video(tmp_path / f"alpha{i}.mp4")[0])
        # White = opaque; H.264 in limited-range YUV is off by 2.5 / 255 measured on these solid frames.
        assert (grey - alpha).abs().max() <= 3 / 255, (i, grey.mean())
