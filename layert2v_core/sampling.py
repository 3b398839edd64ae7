"""Flow-matching sampling as in Wan2.1: the shifted sigma schedule, three ODE solvers, CFG and seeded noise.

Conventions (Wan2.1 T2V):
- A noisy latent at noise level sigma is x = (1 - sigma) * x0 + sigma * noise; the model predicts the velocity
  v = noise - x0, so the clean estimate ("denoised") is x0_hat = x - sigma * v.
- Sigmas run from just under 1 (Wan starts at 0.999, where log-SNR is still finite) down to exactly 0, shifted by
  sigma' = s * sigma / (1 + (s - 1) * sigma). The model's timestep input is sigma * 1000; building it is the
  caller's job (`velocity_fn` receives sigma itself).
- Solvers: `euler` (first order), `dpmpp_2m` (DPM-Solver++ 2M, data prediction, midpoint form) and `unipc`
  (UniPC multistep bh2, order 2, data prediction, with its corrector: the sampler Wan ships). The multistep
  solvers warm up with a first-order step and take a first-order last step onto sigma = 0, where the update
  reduces to the final clean estimate.

Layer-conditioned generation: `known=(latent, mask)` keeps the masked entries on the known trajectory
(1 - sigma) * latent + sigma * noise with the same noise at every step, so they end exactly at `latent`
(strength 0); see `sample` for the strength rule.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

SOLVERS = ("euler", "unipc", "dpmpp_2m")
# Wan's training schedule tops out at 1 - 1/1000: its samplers start there, never at pure noise.
WAN_SIGMA_MAX = 0.999
DEFAULT_STEPS = 50
DEFAULT_SHIFT = 5.0
DEFAULT_GUIDANCE = 5.0
TIMESTEP_SCALE = 1000.0

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

_OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


# ---------------------------------------------------------------- schedule


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift s*sigma / (1 + (s-1)*sigma); s > 1 spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT,
                sigma_max: float = WAN_SIGMA_MAX) -> torch.Tensor:
    """The sampling schedule: float64 [steps + 1], from shift(sigma_max) down to exactly 0.

    Equal spacing in unshifted sigma from `sigma_max` to 0, then the shift (which keeps 0 at 0), as Wan's
    FlowUniPCMultistepScheduler builds it. Use `sigmas[i] * 1000` as the model's timestep.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0 (Wan uses 5 for T2V, 1 means no shift), got {shift!r}")
    if not (isinstance(sigma_max, (int, float)) and 0 < sigma_max <= 1):
        raise ValueError(f"sigma_max must be in (0, 1] (Wan uses {WAN_SIGMA_MAX}), got {sigma_max!r}")
    unshifted = torch.linspace(float(sigma_max), 0.0, steps + 1, dtype=torch.float64)
    sigmas = shift_sigmas(unshifted, float(shift))
    sigmas[-1] = 0.0  # exact zero whatever the rounding, so sampling ends on the clean estimate
    return sigmas


def partial_flow_sigmas(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT, denoise: float = 1.0) -> torch.Tensor:
    """The last `steps` steps of a schedule of round(steps / denoise) steps: denoise < 1 starts part-way down.

    As ComfyUI's `denoise`: 1 is the full schedule from (almost) pure noise, 0.5 starts at the schedule's midpoint.
    """
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float)) or not 0 < denoise <= 1:
        raise ValueError(f"denoise must be a number in (0, 1] (1 generates from noise), got {denoise!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    full = flow_sigmas(max(steps, round(steps / denoise)), shift)
    return full[-(steps + 1):].clone()


def solver_sigmas(sigmas: torch.Tensor | Sequence[float], solver: str) -> torch.Tensor:
    """Sigmas from elsewhere (e.g. a ComfyUI scheduler, which starts at exactly 1) made usable by `solver`.

    Multistep solvers need a finite log-SNR, so a first sigma >= 1 becomes Wan's own start, WAN_SIGMA_MAX.
    """
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu().clone()
    if solver != "euler" and sig.numel() > 1 and sig[0].item() >= 1.0 > sig[1].item():
        sig[0] = max(WAN_SIGMA_MAX, sig[1].item() + (1.0 - sig[1].item()) / 2)
    return sig


def denoiser_from_velocity(velocity_fn: VelocityFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A k-diffusion style denoiser D(x, sigma) = x - sigma * v(x, sigma) (sigma a tensor [B], all equal)."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = float(torch.as_tensor(sigma).flatten()[0])
        return x - level * velocity_fn(x, level).to(x.dtype)
    return denoise


def timesteps_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The model's timestep input for each sigma: sigma * 1000 (float; Wan itself truncates to integers)."""
    return torch.as_tensor(sigmas, dtype=torch.float64) * TIMESTEP_SCALE


# ---------------------------------------------------------------- noise


def seeded_noise(shape: Sequence[int], seed: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `seed`, then moved: the same seed gives the same latent anywhere."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"noise shape must have positive sizes, got {shape}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # Drawn in float32 always, so the values do not depend on the requested dtype's sampling path.
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=device, dtype=dtype)


# ---------------------------------------------------------------- classifier-free guidance


def _batch_pair(uncond: Any, cond: Any) -> Any:
    """Stack uncond and cond along dim 0: tensors, mappings/sequences of them, or constants equal in both."""
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor) or uncond.shape[1:] != cond.shape[1:]:
            raise ValueError("cond and uncond must have the same structure and shapes after the batch dimension, got "
                             f"{tuple(getattr(uncond, 'shape', ()))} and {tuple(cond.shape)}")
        return torch.cat([uncond, cond], dim=0)
    if isinstance(cond, Mapping):
        if not isinstance(uncond, Mapping) or set(uncond) != set(cond):
            raise ValueError("cond and uncond must be mappings with the same keys")
        return {key: _batch_pair(uncond[key], cond[key]) for key in cond}
    if isinstance(cond, (tuple, list)):
        if not isinstance(uncond, (tuple, list)) or len(uncond) != len(cond):
            raise ValueError("cond and uncond must be sequences of the same length")
        return type(cond)(_batch_pair(u, c) for u, c in zip(uncond, cond))
    if uncond != cond:
        raise ValueError(f"non-tensor conditioning must match between cond and uncond, got {uncond!r} and {cond!r}")
    return cond


class CFGVelocity:
    """velocity_fn(x, sigma) = v_uncond + g * (v_cond - v_uncond) around `model_fn(x, sigma, conditioning)`.

    With `batched`, one forward sees [uncond, cond] stacked on dim 0 (x repeated); if that forward runs out of
    device memory the instance switches to two forwards for the rest of the run. guidance == 1 skips uncond.
    """

    def __init__(self, model_fn: Callable[[torch.Tensor, float, Any], torch.Tensor], cond: Any, uncond: Any,
                 guidance: float, batched: bool = True) -> None:
        if not callable(model_fn):
            raise TypeError("model_fn must be callable as model_fn(x, sigma, conditioning) -> velocity")
        if not (isinstance(guidance, (int, float)) and math.isfinite(guidance)):
            raise ValueError(f"guidance must be a finite number (Wan uses {DEFAULT_GUIDANCE}), got {guidance!r}")
        self.model_fn, self.cond, self.uncond = model_fn, cond, uncond
        self.guidance = float(guidance)
        self.batched = bool(batched)
        self._pair = _batch_pair(uncond, cond) if batched and self.guidance != 1.0 else None

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.guidance == 1.0:
            return self.model_fn(x, sigma, self.cond)
        if self.batched:
            try:
                v_uncond, v_cond = self.model_fn(torch.cat([x, x], dim=0), sigma, self._pair).chunk(2, dim=0)
            except _OutOfMemory:
                self.batched, self._pair = False, None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                return self(x, sigma)
        else:
            v_uncond = self.model_fn(x, sigma, self.uncond)
            v_cond = self.model_fn(x, sigma, self.cond)
        return v_uncond + self.guidance * (v_cond - v_uncond)


def dit_model_fn(dit: torch.nn.Module, spec, cached: bool = True,
                 cast: bool = False) -> Callable[[torch.Tensor, float, Mapping], torch.Tensor]:
    """(x, sigma, conditioning) -> the DiT's velocity at timestep sigma x 1000, the model_fn of `cfg_velocity`.

    cached: one forward cache per conditioning (see WanDiT.forward), so the context work runs once per generation.
    cast: feed x in the DiT's dtype and return float32 (a half-precision DiT under a float32 sampler)."""
    caches: dict[int, tuple[Mapping, dict]] = {}

    def model_fn(x: torch.Tensor, sigma: float, c: Mapping) -> torch.Tensor:
        t = torch.full((x.shape[0],), sigma * 1000.0, device=x.device)
        cache = caches.setdefault(id(c), (c, {}))[1] if cached else None  # c lives with its cache: its id stays its own
        out = dit(x.to(dit.dtype) if cast else x, t, c["context"], layer_spec=spec, prompt_lens=c["prompt_lens"],
                  cache=cache)
        return out.float() if cast else out
    return model_fn


def cfg_velocity(model_fn: Callable[[torch.Tensor, float, Any], torch.Tensor], cond: Any, uncond: Any,
                 guidance: float = DEFAULT_GUIDANCE, batched: bool = True) -> CFGVelocity:
    """A guided velocity function for `sample`; see `CFGVelocity`."""
    return CFGVelocity(model_fn, cond, uncond, guidance, batched)


# ---------------------------------------------------------------- solver steps (coefficients in float64)


def _log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma; +inf at sigma = 0."""
    return math.inf if sigma == 0.0 else math.log1p(-sigma) - math.log(sigma)


def _data_prediction_step(x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor,
                          correction: torch.Tensor | float = 0.0, correction_scale: float = 0.0) -> torch.Tensor:
    """Exact-exponential step in x0 form: (s'/s) x + (1 - s') (1 - e^{-h}) x0_hat, plus a scaled correction term."""
    if sigma_next == 0.0:
        return denoised.clone()
    h = _log_snr(sigma_next) - _log_snr(sigma)
    weight = -(1.0 - sigma_next) * math.expm1(-h)
    out = (sigma_next / sigma) * x + weight * denoised
    if correction_scale:
        out = out + (correction_scale * weight) * correction
    return out


class _Euler:
    order = 1

    def __init__(self, sigmas: list[float]) -> None:
        self.sigmas = sigmas

    def step(self, i: int, x: torch.Tensor, velocity: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * velocity


class _DPMpp2M:
    """DPM-Solver++(2M): second-order multistep on the clean estimates, first order at the start and onto sigma 0."""

    order = 2

    def __init__(self, sigmas: list[float]) -> None:
        self.sigmas = sigmas
        self.previous: torch.Tensor | None = None

    def step(self, i: int, x: torch.Tensor, velocity: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        s_prev, s, s_next = (self.sigmas[i - 1] if i else None), self.sigmas[i], self.sigmas[i + 1]
        if self.previous is None or s_next == 0.0:
            out = _data_prediction_step(x, s, s_next, denoised)
        else:
            h = _log_snr(s_next) - _log_snr(s)
            r = (_log_snr(s) - _log_snr(s_prev)) / h
            # D = x0_i + (x0_i - x0_{i-1}) / (2r): the midpoint form of the linear extrapolation in lambda.
            slope = (denoised - self.previous) / r
            out = _data_prediction_step(x, s, s_next, denoised, slope, 0.5)
        self.previous = denoised
        return out


class _UniPC:
    """UniPC multistep, B(h) = e^{h'} - 1 ("bh2"), order 2, on clean estimates, with the UniC corrector.

    At step i the model is evaluated once at the predicted x_i; that estimate first corrects x_i (UniC, using the
    same evaluation, so no extra model call), then the predictor (UniP) moves the corrected x_i to sigma_{i+1}.
    The predictor order is min(2, steps done + 1, steps left); the corrector reuses the previous step's order.
    """

    order = 2

    def __init__(self, sigmas: list[float]) -> None:
        self.sigmas = sigmas
        self.lambdas = [_log_snr(s) for s in sigmas]
        self.history: list[torch.Tensor] = []  # clean estimates, newest last
        self.last_x: torch.Tensor | None = None  # the sample the previous predictor started from
        self.last_order = 0

    def _phi_terms(self, h: float) -> tuple[float, float, float, float]:
        """(h_phi_1, B(h), b1, b2) for the data-prediction form, hh = -h."""
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1  # bh2
        g1 = h_phi_1 / hh - 1.0
        g2 = g1 / hh - 0.5
        return h_phi_1, b_h, g1 / b_h, 2.0 * g2 / b_h

    def correct(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """UniC: redo the step sigma_{i-1} -> sigma_i with the new estimate at sigma_i (order = last predictor's)."""
        if self.last_x is None:
            return x
        s0, s = self.sigmas[i - 1], self.sigmas[i]
        h = self.lambdas[i] - self.lambdas[i - 1]
        h_phi_1, b_h, b1, b2 = self._phi_terms(h)
        alpha = 1.0 - s
        m0 = self.history[-1]
        base = (s / s0) * self.last_x - alpha * h_phi_1 * m0
        if self.last_order == 1:
            rho_new, extra = 0.5, 0.0
        else:
            r1 = (self.lambdas[i - 2] - self.lambdas[i - 1]) / h
            rho_old = (b1 - b2) / (1.0 - r1)
            rho_new = b1 - rho_old
            extra = rho_old * (self.history[-2] - m0) / r1
        return base - alpha * b_h * (extra + rho_new * (denoised - m0))

    def predict(self, i: int, x: torch.Tensor, denoised: torch.Tensor, order: int) -> torch.Tensor:
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        if s_next == 0.0:
            return denoised.clone()
        h = self.lambdas[i + 1] - self.lambdas[i]
        h_phi_1, b_h, _, _ = self._phi_terms(h)
        alpha = 1.0 - s_next
        out = (s_next / s) * x - alpha * h_phi_1 * denoised
        if order == 2:
            r1 = (self.lambdas[i - 1] - self.lambdas[i]) / h
            # For order 2 UniP uses the fixed weight 1/2 on the divided difference.
            out = out - alpha * b_h * 0.5 * (self.history[-2] - denoised) / r1
        return out

    def step(self, i: int, x: torch.Tensor, velocity: torch.Tensor, denoised: torch.Tensor,
             after_correction: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
        x = after_correction(self.correct(i, x, denoised))
        self.history = (self.history + [denoised])[-2:]
        steps_left = len(self.sigmas) - 1 - i
        order = min(self.order, len(self.history), steps_left)
        self.last_x, self.last_order = x, order
        return self.predict(i, x, denoised, order)


_SOLVER_CLASSES = {"euler": _Euler, "unipc": _UniPC, "dpmpp_2m": _DPMpp2M}
assert tuple(_SOLVER_CLASSES) == SOLVERS


# ---------------------------------------------------------------- the sampling loop


def _check_sample_inputs(velocity_fn, noise, sigmas, solver, callback, known, strength) -> tuple:
    if not callable(velocity_fn):
        raise TypeError("velocity_fn must be callable as velocity_fn(x, sigma) -> velocity shaped like x")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point tensor (see seeded_noise), got {type(noise).__name__}"
                        + (f" of dtype {noise.dtype}" if isinstance(noise, torch.Tensor) else ""))
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    if sig.numel() < 2:
        raise ValueError("sigmas must hold at least 2 values (steps + 1, ending at 0); build them with flow_sigmas")
    if not torch.isfinite(sig).all() or not bool((sig[1:] < sig[:-1]).all()):
        raise ValueError(f"sigmas must be finite and strictly decreasing, got {sig.tolist()}")
    if sig[-1].item() != 0.0:
        raise ValueError(f"sigmas must end at exactly 0 so sampling returns a clean latent, got {sig[-1].item()}")
    if solver != "euler" and not sig[0].item() < 1.0:
        raise ValueError(f"solver {solver!r} needs sigmas below 1 (log-SNR is infinite at 1); start at "
                         f"{WAN_SIGMA_MAX} as Wan does (flow_sigmas' default), got {sig[0].item()}")
    if sig[0].item() > 1.0:
        raise ValueError(f"sigmas must lie in [0, 1], got a first sigma of {sig[0].item()}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable as callback(step, total, x, denoised) or None")
    if not (isinstance(strength, (int, float)) and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be a number in [0, 1] (0 keeps the known layers exactly), got {strength!r}")
    if known is None:
        return sig, None, None
    if not (isinstance(known, (tuple, list)) and len(known) == 2):
        raise TypeError("known must be a pair (latent, mask) with mask marking the kept entries")
    latent, mask = known
    if not isinstance(latent, torch.Tensor) or torch.broadcast_shapes(latent.shape, noise.shape) != noise.shape:
        raise ValueError(f"known latent must be a tensor broadcastable to the noise shape {tuple(noise.shape)}, "
                         f"got {tuple(getattr(latent, 'shape', ()))}")
    mask = torch.as_tensor(mask)
    try:
        if torch.broadcast_shapes(mask.shape, noise.shape) != noise.shape:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"known mask of shape {tuple(mask.shape)} does not broadcast to the latent shape "
                         f"{tuple(noise.shape)}") from None
    if mask.dtype != torch.bool:
        if not mask.is_floating_point() or bool(((mask < 0) | (mask > 1)).any()):
            raise ValueError("known mask must be bool, or float with values in [0, 1] (1 = keep)")
    return sig, latent.to(device=noise.device, dtype=noise.dtype), mask.to(noise.device)


@torch.no_grad()
def sample(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor | Sequence[float],
           solver: str = "unipc", callback: Callback | None = None,
           known: tuple[torch.Tensor, torch.Tensor] | None = None, strength: float = 0.0,
           start: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate the flow ODE from `noise` (the sample at sigmas[0], as Wan starts) to sigma 0; returns the latent.

    velocity_fn(x, sigma) -> v, sigma a python float (the model's timestep is sigma * 1000).
    callback(step, total, x, denoised) runs after each step (step counts from 1 to total); raise in it to cancel.
    known = (latent, mask): where mask is True (or 1) the sample is set to (1 - sigma) * latent + sigma * noise,
    with this same `noise`, at the start and after every step, as long as that step's sigma >= strength. So
    strength 0 keeps those entries on the known trajectory all the way and returns `latent` there exactly;
    strength s releases them once the noise level falls below s, letting the model refine them over the last part
    of the schedule (1 regenerates them). A float mask blends the two: x * (1 - m) + target * m.
    start: a latent to begin from instead of pure noise, renoised to sigmas[0] as (1 - s0) * start + s0 * noise
    (partial denoising, with `partial_flow_sigmas`).
    """
    sig, known_latent, mask = _check_sample_inputs(velocity_fn, noise, sigmas, solver, callback, known, strength)
    sigma_list = sig.tolist()
    total = len(sigma_list) - 1
    stepper = _SOLVER_CLASSES[solver](sigma_list)

    def hold_known(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if known_latent is None or sigma < strength:
            return x
        target = (1.0 - sigma) * known_latent + sigma * noise
        if mask.dtype == torch.bool:
            return torch.where(mask, target, x)
        return x * (1 - mask) + target * mask

    if start is None:
        x = noise.clone()
    else:
        if not isinstance(start, torch.Tensor) or start.shape != noise.shape:
            raise ValueError(f"start latent must have the noise shape {tuple(noise.shape)}, got "
                             f"{tuple(getattr(start, 'shape', ()))}")
        start = start.to(device=noise.device, dtype=noise.dtype)
        x = (1.0 - sigma_list[0]) * start + sigma_list[0] * noise
    x = hold_known(x, sigma_list[0])
    for i in range(total):
        sigma = sigma_list[i]
        velocity = velocity_fn(x, sigma)
        if velocity.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(velocity.shape)} for a sample of shape "
                             f"{tuple(x.shape)}")
        velocity = velocity.to(x.dtype)
        denoised = x - sigma * velocity
        if solver == "unipc":
            x = stepper.step(i, x, velocity, denoised, after_correction=lambda t, s=sigma: hold_known(t, s))
        else:
            x = stepper.step(i, x, velocity, denoised)
        x = hold_known(x, sigma_list[i + 1])
        if callback is not None:
            callback(i + 1, total, x, denoised)
    return x
