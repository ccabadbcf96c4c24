"""The exact log-likelihood of the probability-flow ODE (Song et al. 2021, "Score-based generative modeling
through stochastic differential equations", sec. 4.3 and appendix D.2), beside the variational bound of
:func:`ddpm.diffusion.bits_per_dim`.

The ODE is continuous in time and our schedules are discrete, so the discrete VP schedule is read as a
continuous one on t ∈ [0, 1] (:class:`ContinuousVP`): step index i sits at t_i = (i + 1) / T, log ᾱ(t)
is a smooth monotone curve through those points and through 0 at t = 0, β(t) = −d log ᾱ / dt, and the
network, trained at integer indices, is asked at the fractional index t · T − 1. The ODE runs from
t = 1/T (index 0, the least noise the network knows) to t = 1, where the prior is N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.interpolate import PchipInterpolator

from ddpm.diffusion import network_input, x0_eps_from_output
from ddpm.registry import check_name
from ddpm.schedules import Schedule

TRACES = ("rademacher", "gaussian", "exact")
RTOL = ATOL = 1e-5  # Song et al.'s tolerances for RK45

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- The discrete schedule, read in continuous time -------------------------------------------------------


@dataclass(frozen=True)
class ContinuousVP:
    """A discrete schedule read as a VP SDE on t ∈ [0, 1] (see the module docstring): log ᾱ(t) is the
    monotone cubic (PCHIP, Fritsch & Carlson 1980) through (0, 0) and (t_i, log ᾱ_i), t_i = (i + 1) / T, so
    that β(t) = −d log ᾱ / dt is continuous and positive; an ODE solver with error control stalls at the
    jumps a piecewise-constant β would have at every step."""

    T: int
    curve: PchipInterpolator  # log ᾱ(t)

    @classmethod
    def from_schedule(cls, schedule: Schedule) -> ContinuousVP:
        if schedule.alpha_bar[-1] <= 0:
            raise ValueError("the ODE needs ᾱ_T > 0: with zero terminal SNR β(t) is infinite at t = 1")
        t = np.arange(schedule.T + 1) / schedule.T
        log_ab = np.concatenate([[0.0], schedule.alpha_bar.cpu().double().log().numpy()])
        return cls(schedule.T, PchipInterpolator(t, log_ab))

    def log_alpha_bar(self, t: float) -> float:
        return float(self.curve(t))

    def beta(self, t: float) -> float:
        """β(t) = −d log ᾱ(t) / dt."""
        return -float(self.curve(t, 1))

    def step_index(self, t: float) -> float:
        """The fractional step index the network is asked at: t · T − 1 (index i at t = (i + 1) / T)."""
        return t * self.T - 1


# --- The probability-flow ODE and its divergence ----------------------------------------------------------


def ode_drift(
    model_fn: ModelFn, x: torch.Tensor, t: float, vp: ContinuousVP, prediction: str = "eps"
) -> torch.Tensor:
    """dx/dt = f(t) x − ½ g(t)² ∇ log p_t(x) of the VP SDE (Song et al. 2021, eq. 13 and 32), with
    f = −½ β(t), g² = β(t) and the score −ε̂ / σ(t), σ(t)² = 1 − ᾱ(t):  dx/dt = −½ β(t) (x − ε̂ / σ(t)).

    ε̂ is read from the network's output at ᾱ(t) (:func:`ddpm.diffusion.x0_eps_from_output`, on a
    one-step schedule holding ᾱ(t)), without clipping: the ODE needs a smooth field."""
    here = Schedule.from_alpha_bar(torch.tensor([math.exp(vp.log_alpha_bar(t))], dtype=torch.float64))
    index = torch.full((x.shape[0],), vp.step_index(t), device=x.device, dtype=x.dtype)
    zeros = torch.zeros(x.shape[0], device=x.device, dtype=torch.long)  # the one step of `here`
    output = model_fn(network_input(x, zeros, here, prediction), index).to(x.dtype)
    _, eps = x0_eps_from_output(output, x, zeros, here, prediction)
    sigma = float(here.sqrt_one_minus_alpha_bar[0])
    return -0.5 * vp.beta(t) * (x - eps / sigma)


def drift_and_divergence(
    model_fn: ModelFn,
    x: torch.Tensor,
    t: float,
    vp: ContinuousVP,
    prediction: str,
    probe: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The drift f(x, t) and its divergence ∇·f per sample: exactly (one backward pass per dimension) when
    ``probe`` is None, else the Hutchinson–Skilling estimate εᵀ (∂f/∂x) ε (Hutchinson 1989, Skilling 1989;
    Grathwohl et al. 2019), unbiased when E[ε εᵀ] = I."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = ode_drift(model_fn, x, t, vp, prediction)
        if probe is not None:
            (vjp,) = torch.autograd.grad((f * probe).sum(), x)  # εᵀ ∂f/∂x
            return f.detach(), (vjp * probe).flatten(1).sum(1)
        flat = f.flatten(1)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for d in range(flat.shape[1]):
            (row,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True)
            div = div + row.flatten(1)[:, d]
        return f.detach(), div


def ode_log_likelihood(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    *,
    trace: str = "rademacher",
    rtol: float = RTOL,
    atol: float = ATOL,
    generator: torch.Generator | None = None,
    callback: Callable[[float], None] | None = None,
) -> dict:
    """log p(x) in nats per sample under the probability-flow ODE (Song et al. 2021, appendix D.2).

    The instantaneous change of variables (Chen et al. 2018): along dx/dt = f(x, t), d log p_t(x(t)) / dt
    = −∇·f, so log p(x(ε)) = log N(x(1); 0, I) + ∫_ε^1 ∇·f(x(t), t) dt. State and log-density change are
    integrated together by scipy's ``solve_ivp`` (RK45, ``rtol``, ``atol``), from ε = 1/T (see the module
    docstring) to t = 1. ``trace`` is how ∇·f is computed: a Hutchinson–Skilling estimate with one
    Rademacher or Gaussian probe per sample, fixed over the solve (unbiased; Rademacher has the smaller
    variance, and none when ∂f/∂x is diagonal), or ``exact`` (one backward pass per dimension: for 2-D data).
    ``callback(t)`` sees each evaluation's time. Returns per-sample ``log_likelihood``, ``prior`` and
    ``delta`` (the integral), the end point ``z`` = x(1), and ``nfe`` (network evaluations).
    """
    check_name("trace estimator", trace, TRACES)
    vp = ContinuousVP.from_schedule(schedule)
    shape, n = x.shape, x.shape[0]
    dims = x[0].numel()
    probe = None
    if trace != "exact":
        probe = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        if trace == "rademacher":
            probe = probe.sign()
    nfe = 0

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        if callback is not None:
            callback(t)
        x_t = torch.from_numpy(state[:-n]).reshape(shape).to(x.device, x.dtype)
        f, div = drift_and_divergence(model_fn, x_t, t, vp, prediction, probe)
        return np.concatenate([f.flatten().double().cpu().numpy(), div.double().cpu().numpy()])

    start = np.concatenate([x.detach().flatten().double().cpu().numpy(), np.zeros(n)])
    eps = 1 / schedule.T
    solution = solve_ivp(rhs, (eps, 1.0), start, method="RK45", rtol=rtol, atol=atol)
    if not solution.success:
        raise FloatingPointError(f"the ODE solver failed: {solution.message}")
    end = solution.y[:, -1]
    z = torch.from_numpy(end[:-n]).reshape(shape)
    delta = torch.from_numpy(end[-n:])
    prior = -0.5 * (dims * math.log(2 * math.pi) + z.flatten(1).pow(2).sum(1))  # log N(z; 0, I)
    return {"log_likelihood": prior + delta, "prior": prior, "delta": delta, "z": z, "nfe": nfe}


# --- From a density of [−1, 1] values to bits per dimension of 8-bit data ---------------------------------


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None, bins: int = 256) -> torch.Tensor:
    """Uniform dequantisation (Theis et al. 2016; Song et al. 2021, appendix D.2) in the model's scale:
    pixel k is k / 127.5 − 1, so each owns a bin of width 2 / (bins − 1) around it; add noise uniform on
    that bin. (The bins are those of the variational bound's discretised decoder, Ho et al. 2020, eq. 13.)"""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (u - 0.5) * 2 / (bins - 1)


def nll_bits_per_dim(log_likelihood: torch.Tensor, dims: int, bins: int | None = 256) -> torch.Tensor:
    """−log p / (D ln 2): bits per dimension. For 8-bit images (``bins`` values) whose density ``p`` is of
    dequantised values in [−1, 1], the change of scale to the unit bin adds D log((bins − 1) / 2) nats:
    E[−log p(y)] + D log((bins − 1)/2) bounds −log P(pixels) (Jensen). ``bins=None``: continuous data."""
    scale = math.log2((bins - 1) / 2) if bins else 0.0
    return -log_likelihood / (dims * math.log(2)) + scale
