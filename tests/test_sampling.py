"""Flow-matching sampler: schedule, accuracy on an analytic flow, diffusers parity, seeds, CFG, layer conditioning."""
import math

import numpy as np
import pytest
import torch

from layert2v_core.conditioning import keep_mask, known_latent
from layert2v_core.layers import LayerSpec
from layert2v_core.sampling import (SOLVERS, cfg_velocity, flow_sigmas, sample, seeded_noise, shift_sigmas,
                                    timesteps_from_sigmas)


# ---------------------------------------------------------------- an exactly solvable flow
# Data x0 ~ N(mu, s^2) per entry. Along x = (1 - sigma) x0 + sigma eps the marginal is N(a mu, a^2 s^2 + sigma^2)
# with a = 1 - sigma; the exact velocity E[eps - x0 | x] is (sigma - a s^2)(x - a mu) / var - mu, and the ODE keeps
# the standardised value (x - a mu) / sqrt(var) constant, so x0 = mu + s * that value.

class GaussianFlow:
    def __init__(self, size: int = 256, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(size, dtype=torch.float64, generator=g)
        self.s = 0.2 + 0.8 * torch.rand(size, dtype=torch.float64, generator=g)
        self.start = torch.randn(size, dtype=torch.float64, generator=g)

    def velocity(self, x, sigma):
        a = 1 - sigma
        var = a * a * self.s ** 2 + sigma * sigma
        return (sigma - a * self.s ** 2) * (x - a * self.mu) / var - self.mu

    def exact_x0(self, sigma0):
        a = 1 - sigma0
        var = a * a * self.s ** 2 + sigma0 * sigma0
        return self.mu + self.s * (self.start - a * self.mu) / var.sqrt()

    def rms_error(self, steps, shift, solver):
        sigmas = flow_sigmas(steps, shift)
        out = sample(self.velocity, self.start.clone(), sigmas, solver)
        return (out - self.exact_x0(sigmas[0].item())).pow(2).mean().sqrt().item()


def nonlinear_velocity(x, sigma):
    """A fixed, smooth, nonlinear field for solver parity (not a real flow; only the arithmetic is compared)."""
    sigma = float(sigma)
    return 0.5 * torch.sin(2 * x) + x * math.cos(3 * sigma) - sigma


# ---------------------------------------------------------------- schedule

def test_flow_sigmas_match_wan_construction():
    sigmas = flow_sigmas(50, 5.0)
    assert sigmas.shape == (51,) and sigmas.dtype == torch.float64
    assert sigmas[-1].item() == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
    # Wan: equal steps from 0.999 to 0, shifted s*x/(1+(s-1)*x).
    unshifted = np.linspace(0.999, 0.0, 51)
    expected = 5.0 * unshifted / (1 + 4.0 * unshifted)
    np.testing.assert_allclose(sigmas.numpy(), expected, rtol=0, atol=1e-15)
    assert sigmas[0].item() == pytest.approx(5 * 0.999 / (1 + 4 * 0.999))
    assert torch.equal(flow_sigmas(10, 1.0), torch.linspace(0.999, 0, 11, dtype=torch.float64))
    assert timesteps_from_sigmas(sigmas)[0].item() == pytest.approx(1000 * sigmas[0].item())
    assert shift_sigmas(torch.tensor(0.5, dtype=torch.float64), 3.0).item() == pytest.approx(0.75)


def test_flow_sigmas_match_diffusers_flow_schedule():
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    ref.set_timesteps(50)
    # diffusers keeps sigmas in float32: agreement to float32 rounding (~6e-8 at sigma ~ 1).
    np.testing.assert_allclose(ref.sigmas.double().numpy(), flow_sigmas(50, 5.0).numpy(), rtol=0, atol=1e-7)


# ---------------------------------------------------------------- accuracy on the analytic flow

@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_solvers_converge_with_expected_order(shift):
    flow = GaussianFlow()
    orders, finest = {}, {}
    for solver in SOLVERS:
        coarse, fine = flow.rms_error(256, shift, solver), flow.rms_error(1024, shift, solver)
        # Observed order over two step doublings; the last 16x of steps is where all three are asymptotic.
        orders[solver] = math.log2(coarse / fine) / 2
        finest[solver] = fine
    # Measured: shift 1 -> euler 1.00, dpmpp_2m 1.80, unipc 2.03; shift 5 -> euler 1.00, dpmpp_2m 1.58, unipc 1.82.
    assert 0.9 < orders["euler"] < 1.1, orders
    assert orders["dpmpp_2m"] > 1.45, orders
    assert orders["unipc"] > 1.6, orders
    assert all(err < 3e-3 for err in finest.values()), finest
    assert finest["unipc"] < finest["euler"] / 20 and finest["dpmpp_2m"] < finest["euler"] / 5, finest


def test_default_schedule_is_accurate_at_50_steps():
    flow = GaussianFlow()
    errors = {solver: flow.rms_error(50, 5.0, solver) for solver in SOLVERS}
    # Higher order pays off at the default step count too.
    # Measured RMS error: euler 0.046, dpmpp_2m 0.0088, unipc 0.0073.
    assert errors["unipc"] < errors["euler"] / 3 and errors["dpmpp_2m"] < errors["euler"] / 3, errors


# ---------------------------------------------------------------- parity with diffusers' schedulers

def _run_diffusers(scheduler, start):
    """The reference trajectory: the sample after every step, and the float32 sigmas it used."""
    x, trajectory = start.clone(), []
    sigmas = scheduler.sigmas
    scheduler.set_begin_index(0)
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(nonlinear_velocity(x, sigmas[i].item()), t, x, return_dict=False)[0]
        trajectory.append(x)
    return torch.stack(trajectory), sigmas.double()


def _run_ours(sigmas, solver, start):
    trajectory = []
    sample(nonlinear_velocity, start.clone(), sigmas, solver, callback=lambda s, n, x, d: trajectory.append(x))
    return torch.stack(trajectory)


def _parity_start():
    return torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(1))


# fp32 on both sides; diffusers forms its step coefficients in float32 from float32 sigmas, we form them in float64.
# Per step that differs by a few float32 ulps of values up to ~5; the measured gap over whole trajectories is
# at most 2.2e-6 (unipc 2.1e-6, dpmpp_2m 1.9e-6, euler 0). 2e-5 leaves room for other CPUs' rounding and still
# catches a wrong coefficient: the short 8-step, unshifted schedule makes the warm-up and corrector steps count
# (near sigma = 1 the coefficients carry a factor 1 - sigma that hides them in the 50-step shifted schedule).
PARITY_ATOL = 2e-5
PARITY_SCHEDULES = [(50, 5.0), (8, 1.0)]


@pytest.mark.parametrize("steps, shift", PARITY_SCHEDULES)
def test_unipc_matches_diffusers_unipc_flow(steps, shift):
    from diffusers import UniPCMultistepScheduler

    ours = flow_sigmas(steps, shift)
    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
                                  solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True)
    # Custom sigmas are the steps without the final 0; flow_shift=1 so diffusers does not shift them again.
    ref.set_timesteps(sigmas=ours[:-1].numpy())
    start = _parity_start()
    expected, ref_sigmas = _run_diffusers(ref, start)
    torch.testing.assert_close(_run_ours(ref_sigmas, "unipc", start), expected, atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("steps, shift", PARITY_SCHEDULES)
def test_dpmpp_2m_matches_diffusers_dpmsolver_flow(steps, shift):
    from diffusers import DPMSolverMultistepScheduler

    # This scheduler takes no custom flow sigmas, but its own flow schedule is ours (checked above).
    ref = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                      solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                      final_sigmas_type="zero")
    ref.set_timesteps(steps)
    torch.testing.assert_close(ref.sigmas.double(), flow_sigmas(steps, shift), atol=1e-7, rtol=0)
    start = _parity_start()
    expected, ref_sigmas = _run_diffusers(ref, start)
    torch.testing.assert_close(_run_ours(ref_sigmas, "dpmpp_2m", start), expected, atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("steps, shift", PARITY_SCHEDULES)
def test_euler_matches_diffusers_flow_match_euler(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ours = flow_sigmas(steps, shift)
    ref = FlowMatchEulerDiscreteScheduler(shift=1.0)
    ref.set_timesteps(sigmas=ours[:-1].numpy())
    start = _parity_start()
    expected, ref_sigmas = _run_diffusers(ref, start)
    torch.testing.assert_close(_run_ours(ref_sigmas, "euler", start), expected, atol=PARITY_ATOL, rtol=0)


# ---------------------------------------------------------------- seeds

def test_same_seed_gives_bit_identical_latents_and_different_seeds_differ():
    shape = (1, 16, 6, 4, 4)
    sigmas = flow_sigmas(8, 5.0)

    def run(seed):
        return sample(nonlinear_velocity, seeded_noise(shape, seed), sigmas, "unipc")

    first, second, other = run(1234), run(1234), run(1235)
    assert torch.equal(first, second)
    assert not torch.equal(first, other) and (first - other).abs().mean() > 0.1


def test_seeded_noise_is_drawn_on_cpu_then_moved():
    g = torch.Generator(device="cpu").manual_seed(7)
    expected = torch.randn((2, 3), generator=g)
    assert torch.equal(seeded_noise((2, 3), 7), expected)
    assert torch.equal(seeded_noise((2, 3), 7, dtype=torch.float64), expected.double())
    assert seeded_noise((2, 3), 7, device="meta").device.type == "meta"


# ---------------------------------------------------------------- callback

def test_callback_reports_every_step_and_can_cancel():
    seen = []
    sigmas = flow_sigmas(6, 5.0)
    x = torch.randn(3, 4)
    out = sample(nonlinear_velocity, x, sigmas, "dpmpp_2m", callback=lambda s, n, xs, d: seen.append((s, n, d)))
    assert [(s, n) for s, n, _ in seen] == [(i, 6) for i in range(1, 7)]
    assert torch.equal(seen[-1][2], out)  # the last step lands on the last clean estimate

    class Cancelled(Exception):
        pass

    calls = []

    def counting_velocity(x, sigma):
        calls.append(sigma)
        return nonlinear_velocity(x, sigma)

    def cancel_at_three(step, total, x, denoised):
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        sample(counting_velocity, x, sigmas, "unipc", callback=cancel_at_three)
    assert len(calls) == 3


# ---------------------------------------------------------------- classifier-free guidance

def _toy_model(log):
    def model(x, sigma, context):
        log.append(x.shape[0])
        return x * context["scale"].view(-1, 1) + sigma
    return model


def test_cfg_combines_uncond_and_cond_batched_or_not():
    x = torch.randn(2, 5)
    cond = {"scale": torch.tensor([2.0, 3.0]), "policy": "paper"}
    uncond = {"scale": torch.tensor([0.5, 0.25]), "policy": "paper"}
    expected = (x * uncond["scale"].view(-1, 1) + 0.3) + 5.0 * (x * (cond["scale"] - uncond["scale"]).view(-1, 1))
    log = []
    batched = cfg_velocity(_toy_model(log), cond, uncond, 5.0, batched=True)(x, 0.3)
    assert log == [4]  # one forward over [uncond, cond]
    log.clear()
    separate = cfg_velocity(_toy_model(log), cond, uncond, 5.0, batched=False)(x, 0.3)
    assert log == [2, 2]
    torch.testing.assert_close(batched, expected)
    torch.testing.assert_close(separate, expected)
    log.clear()
    cfg_velocity(_toy_model(log), cond, uncond, 1.0)(x, 0.3)
    assert log == [2]  # guidance 1 is the conditional model alone


def test_cfg_falls_back_to_two_forwards_when_the_batch_runs_out_of_memory():
    log = []

    def model(x, sigma, context):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated")
        log.append(x.shape[0])
        return x * context

    guided = cfg_velocity(model, torch.tensor([[3.0]]), torch.tensor([[1.0]]), 2.0)
    x = torch.ones(1, 1)
    torch.testing.assert_close(guided(x, 0.5), torch.tensor([[5.0]]))
    assert guided.batched is False and log == [1, 1]


# ---------------------------------------------------------------- layer-conditioned generation

def _coupled_velocity(x, sigma):
    """Couples every segment to every other through the time mean, so generated layers depend on kept ones."""
    return torch.tanh(x) - (1 - sigma) * x.mean(dim=2, keepdim=True) + 0.1 * sigma


def _serialized(spec, frames=2, seed=3):
    shape = (1, 4, spec.num_segments * frames, 3, 3)
    return shape, seeded_noise(shape, seed), seeded_noise(shape, seed + 100)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("keep", [("bg",), ("fg1", "mask1"), ("full",)],
                         ids=["new-foreground-on-given-bg", "new-bg-behind-given-fg", "decompose-given-video"])
def test_kept_layers_end_exactly_at_the_given_latent(solver, keep):
    spec = LayerSpec(1)
    shape, noise, given = _serialized(spec)
    given_layers = {name: seg for name, seg in spec.split(given).items() if name in keep}
    latent, mask = known_latent(spec, given_layers, shape)
    sigmas = flow_sigmas(10, 5.0)
    trajectory_gaps = []

    def check_trajectory(step, total, x, denoised):
        sigma = sigmas[step].item()
        target = (1 - sigma) * latent + sigma * noise
        trajectory_gaps.append((x - target)[mask].abs().max().item())

    out = sample(_coupled_velocity, noise, sigmas, solver, callback=check_trajectory, known=(latent, mask))
    out_layers, free = spec.split(out), sample(_coupled_velocity, noise, sigmas, solver)
    for name in spec.segments:
        if name in keep:
            assert torch.equal(out_layers[name], given_layers[name]), name  # bit-exact at strength 0
        else:
            # the generated layers respond to the kept ones
            assert (out_layers[name] - spec.split(free)[name]).abs().max() > 1e-3, name
    assert max(trajectory_gaps) == 0.0  # on the known trajectory, with the same noise, after every step


def test_keep_mask_follows_layer_spec_for_two_foregrounds():
    spec = LayerSpec(2)
    shape = (1, 2, spec.num_segments * 3, 2, 2)
    mask = keep_mask(spec, ["fg2", "mask2"], shape)
    marked = spec.split(mask)
    assert all(bool(marked[n].all()) == (n in ("fg2", "mask2")) and bool(marked[n].any()) == (n in ("fg2", "mask2"))
               for n in spec.segments)
    with pytest.raises(ValueError, match=r"unknown layer.*fg3"):
        keep_mask(spec, ["fg3"], shape)
    with pytest.raises(ValueError, match="nothing to generate"):
        keep_mask(spec, spec.segments, shape)


def test_strength_releases_kept_layers_below_that_noise_level():
    spec = LayerSpec(1)
    shape, noise, given = _serialized(spec)
    mask = keep_mask(spec, ["bg"], shape)
    sigmas = flow_sigmas(10, 5.0)
    gaps = []

    def record(step, total, x, denoised):
        target = (1 - sigmas[step].item()) * given + sigmas[step].item() * noise
        gaps.append((sigmas[step].item(), (x - target)[mask].abs().max().item()))

    out = sample(_coupled_velocity, noise, sigmas, "unipc", callback=record, known=(given, mask), strength=0.5)
    assert all(gap == 0.0 for sigma, gap in gaps if sigma >= 0.5)
    assert all(gap > 0.0 for sigma, gap in gaps if sigma < 0.5)
    moved = (spec.split(out)["bg"] - spec.split(given)["bg"]).abs().max().item()
    assert 0 < moved
    # strength 1 never holds them (sigma < 1 throughout): the same as generating everything.
    free = sample(_coupled_velocity, noise, sigmas, "unipc")
    assert torch.equal(sample(_coupled_velocity, noise, sigmas, "unipc", known=(given, mask), strength=1.0), free)


def test_float_mask_of_ones_equals_bool_mask():
    spec = LayerSpec(1)
    shape, noise, given = _serialized(spec)
    mask = keep_mask(spec, ["full"], shape)
    sigmas = flow_sigmas(6, 5.0)
    a = sample(_coupled_velocity, noise, sigmas, "euler", known=(given, mask))
    b = sample(_coupled_velocity, noise, sigmas, "euler", known=(given, mask.float()))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- bad input, reported before any model call

def _never_called(x, sigma):
    raise AssertionError("the model must not run on invalid input")


@pytest.mark.parametrize("kwargs, message", [
    (dict(solver="ddim"), r"unknown solver 'ddim'; choose one of euler, unipc, dpmpp_2m"),
    (dict(sigmas=[0.9, 0.5]), r"end at exactly 0"),
    (dict(sigmas=[0.5, 0.9, 0.0]), r"strictly decreasing"),
    (dict(sigmas=[1.0, 0.5, 0.0]), r"below 1"),
    (dict(sigmas=[0.0]), r"at least 2"),
    (dict(strength=1.5), r"strength must be a number in \[0, 1\]"),
    (dict(known=(torch.zeros(2, 3), torch.ones(4, dtype=torch.bool))), r"does not broadcast"),
    (dict(known=(torch.zeros(2, 3), torch.full((2, 3), 2.0))), r"values in \[0, 1\]"),
    (dict(known=torch.zeros(2, 3)), r"pair \(latent, mask\)"),
    (dict(callback=3), r"callback must be callable"),
])
def test_invalid_sampling_input_fails_before_the_model_runs(kwargs, message):
    args = dict(velocity_fn=_never_called, noise=torch.zeros(2, 3), sigmas=flow_sigmas(4), solver="unipc")
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        sample(**args)


def test_invalid_schedule_and_seed_messages():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="shift must be a finite number > 0"):
        flow_sigmas(10, shift=0)
    with pytest.raises(ValueError, match=r"sigma_max must be in \(0, 1\]"):
        flow_sigmas(10, sigma_max=1.5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        seeded_noise((2,), -1)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        cfg_velocity(lambda x, s, c: x, None, None, float("nan"))
    assert sample(lambda x, s: -x, torch.ones(2), [1.0, 0.0], "euler").tolist() == [2.0, 2.0]
