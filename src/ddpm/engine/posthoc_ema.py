"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion models",
sec. 3 and appendix C): choose the length of the weights' average after training instead of before.

Training keeps a few power-function EMAs (:class:`PowerEMA`), whose averaging profile has the same shape at
every step t, and stores them every so often. Any other power-function EMA at a stored step is afterwards
approximated by a linear combination of the stored snapshots, found by least squares on the profiles
(:func:`posthoc_coefficients`). The length of an EMA is σ_rel, its profile's standard deviation relative to
t: the paper's 0.05 puts 95 % of the weight on the last 15 % of training, and 0.10 on the last 30 %.
"""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddpm.config import SIGMA_REL_MAX, SIGMA_REL_RANGE
from ddpm.engine import checkpoint as ckpt

SNAPSHOTS = "posthoc-ema"  # RUN/posthoc-ema/step-NNNNNNNN/: one snapshot of the power EMAs

# --- The power-function EMA (sec. 3.1) -------------------------------------------------------------------


def sigma_rel_from_gamma(gamma):
    """σ_rel = (γ+1)^½ (γ+2)^−1 (γ+3)^−½ (sec. 3.1; appendix C, eq. 123): the standard deviation of the
    profile :func:`power_profile` divided by its length t."""
    gamma = np.asarray(gamma, dtype=np.float64)
    return np.sqrt(gamma + 1) / ((gamma + 2) * np.sqrt(gamma + 3))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 of the power profile of length σ_rel, inverting :func:`sigma_rel_from_gamma`
    (appendix C, eq. 126 and Algorithm 2).

    Squared, with its denominators cleared, σ_rel² (γ+2)² (γ+3) = γ+1 is the cubic
    γ³ + 7γ² + (16 − σ_rel⁻²) γ + (12 − σ_rel⁻²) = 0. For 0 < σ_rel < 1/√12 it has one positive root (σ_rel
    falls as γ grows from 0) and its other roots have real parts below −7/2 (the roots sum to −7), so γ is
    the root with the largest real part. σ_rel = 1/√12 is γ = 0, the running mean of all weights.
    """
    if not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise ValueError(f"σ_rel must lie in {SIGMA_REL_RANGE}, got {sigma_rel}")
    k = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - k, 12.0 - k])
    return max(0.0, float(roots.real.max()))  # max(0, …): σ_rel = 1/√12 may round to a root of −1e-16


def power_beta(t: int, gamma: float) -> float:
    """β_t = (1 − 1/t)^(γ+1) (sec. 3.1; appendix C, eq. 127), the decay of the update θ̂_t = β_t θ̂_{t−1} +
    (1 − β_t) θ_t after optimiser step t = 1, 2, …

    Iterated from β_1 = 0, it gives θ_i the weight (i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1): exactly the mass of
    :func:`power_profile` on (i−1, i], the step during which θ_i was the weights.
    """
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def power_profile(tau, t: float, gamma: float):
    """p_t(τ) = (γ+1) τ^γ / t^(γ+1) for 0 ≤ τ ≤ t, else 0 (sec. 3.1): the weight the power-function EMA at
    time t gives the weights of time τ. It integrates to 1."""
    tau = np.asarray(tau, dtype=np.float64)
    inside = (tau >= 0) & (tau <= t)
    return np.where(inside, (gamma + 1) / t * (np.clip(tau, 0, t) / t) ** gamma, 0.0)


# --- Reconstruction by least squares (sec. 3) -------------------------------------------------------------


def profile_inner_product(t_a, gamma_a, t_b, gamma_b):
    """⟨p_a, p_b⟩ = ∫ p_a(τ) p_b(τ) dτ of two power profiles (appendix C, eq. 151):

        (γ_a+1)(γ_b+1) / (γ_a+γ_b+1) · t^(γ_a+γ_b+1) / (t_a^(γ_a+1) t_b^(γ_b+1)),  t = min(t_a, t_b),

    computed as (t/t_a)^(γ_a+1) (t/t_b)^(γ_b+1) / t, ratios at most 1, so that long runs and large γ
    (t^γ far beyond float64) stay finite. Broadcasts over arrays.
    """
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    t = np.minimum(t_a, t_b)
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (t / t_a) ** (g_a + 1) * (t / t_b) ** (g_b + 1) / t


def posthoc_coefficients(steps, gammas, target_step: int, target_gamma: float) -> tuple[np.ndarray, float]:
    """The weights x_i of snapshots (step t_i, exponent γ_i) whose combination Σ x_i θ̂_i best stands for
    the power-function EMA of exponent γ_r at step t_r (sec. 3; appendix C, Algorithm 3).

    x minimises ‖Σ x_i p_i − p_r‖², the squared L2 distance of the profiles: the normal equations A x = b
    with A_ij = ⟨p_i, p_j⟩ and b_i = ⟨p_i, p_r⟩ (:func:`profile_inner_product`), solved by least squares
    (a minimum-norm x if A is singular). Each profile has unit mass, so x is then scaled to sum to 1: the
    result stays an average, and weights that never changed are reproduced exactly.

    Returns x and the profile's relative error ‖Σ x_i p_i − p_r‖ / ‖p_r‖: 0 for a perfect match.
    """
    t_i = np.asarray(steps, dtype=np.float64)
    g_i = np.asarray(gammas, dtype=np.float64)
    A = profile_inner_product(t_i[:, None], g_i[:, None], t_i[None, :], g_i[None, :])
    b = profile_inner_product(t_i, g_i, target_step, target_gamma)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    x = x / x.sum()
    norm2 = profile_inner_product(target_step, target_gamma, target_step, target_gamma)
    error2 = x @ A @ x - 2 * x @ b + norm2  # ‖Σ x_i p_i − p_r‖², expanded
    return x, float(np.sqrt(max(error2, 0.0) / norm2))


# --- Keeping the EMAs while training ---------------------------------------------------------------------


class PowerEMA:
    """One power-function EMA of the weights per σ_rel (sec. 3.1), updated after every optimiser step t:
    θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t with β_t = :func:`power_beta` (β_1 = 0: the random initialisation
    gets no weight). Buffers are copied, as by :class:`ddpm.engine.ema.EMA`."""

    def __init__(self, model: nn.Module, sigma_rels):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(gamma_from_sigma_rel(s) for s in self.sigma_rels)
        self.models = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        params = [p.detach() for p in model.parameters()]
        for gamma, ema in zip(self.gammas, self.models):
            torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - power_beta(t, gamma))
            for eb, b in zip(ema.buffers(), model.buffers()):
                eb.copy_(b)

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The EMAs' weights by file name, ``power-ema-0`` for the first σ_rel, and so on."""
        return {f"power-ema-{i}": ema.state_dict() for i, ema in enumerate(self.models)}


# --- Snapshots in the run folder -------------------------------------------------------------------------


def snapshot_dir(run_dir: Path) -> Path:
    return Path(run_dir) / SNAPSHOTS


def save_snapshot(run_dir: Path, step: int, power: PowerEMA) -> Path:
    """Write ``RUN/posthoc-ema/step-NNNNNNNN/``: the EMAs (:meth:`PowerEMA.tensors`), and their σ_rel and γ
    in ``state.json``, atomically and checksummed as a checkpoint is (:func:`ckpt.save_step_folder`).

    Raises:
        CheckpointWriteError: the write failed (full disk, read-only folder); nothing of it is left.
    """
    state = {"step": step, "sigma_rel": list(power.sigma_rels), "gamma": list(power.gammas)}
    try:
        return ckpt.save_step_folder(snapshot_dir(run_dir), step, power.tensors(), state)
    except OSError as e:
        where = snapshot_dir(run_dir) / ckpt.step_name(step)
        raise ckpt.CheckpointWriteError(
            f"could not write the post-hoc EMA snapshot {where}: {e.strerror or e}; {ckpt.kept(run_dir)}"
        ) from e


def remove_snapshots_after(run_dir: Path, step: int) -> None:
    """Drop snapshots of steps after ``step``, the checkpoint a run resumes from: those steps are redone."""
    for folder in ckpt.list_step_folders(snapshot_dir(run_dir)):
        if int(folder.name[len(ckpt.PREFIX) :]) > step:
            shutil.rmtree(folder)


@dataclass(frozen=True)
class Snapshot:
    """One snapshot folder: its step and, for each of its files ``power-ema-i``, the EMA's σ_rel and γ."""

    path: Path
    step: int
    sigma_rels: tuple[float, ...]
    gammas: tuple[float, ...]


def list_snapshots(run_dir: Path) -> list[Snapshot]:
    """The run's snapshots, oldest first, with a one-line error for a damaged ``state.json``."""
    found = []
    for folder in ckpt.list_step_folders(snapshot_dir(run_dir)):
        state = ckpt.load_state(folder)
        sigma_rels, gammas = state.get("sigma_rel"), state.get("gamma")
        lists = isinstance(sigma_rels, list) and isinstance(gammas, list) and len(sigma_rels) == len(gammas)
        numbers = lists and all(type(x) in (int, float) and math.isfinite(x) for x in sigma_rels + gammas)
        step = int(folder.name[len(ckpt.PREFIX) :])
        if not (numbers and gammas and min(gammas) >= 0 and state["step"] == step and step >= 1):
            raise ckpt.CheckpointError(
                f"{folder / 'state.json'}: not a post-hoc EMA snapshot's state (its folder's step, and "
                "sigma_rel and gamma ≥ 0, two lists of numbers of one length)"
            )
        found.append(Snapshot(folder, state["step"], tuple(sigma_rels), tuple(gammas)))
    return found


@dataclass
class Reconstruction:
    """A power-function EMA rebuilt after training: its weights, and how well its profile was matched."""

    tensors: dict[str, torch.Tensor]
    sigma_rel: float
    step: int
    snapshots: list[Snapshot]  # those combined: every snapshot up to ``step``
    profile_error: float  # ‖Σ x_i p_i − p_r‖ / ‖p_r‖ (posthoc_coefficients)


def reconstruct(run_dir: Path, sigma_rel: float, step: int | None = None) -> Reconstruction:
    """The power-function EMA of length ``sigma_rel`` at ``step`` (a snapshot's step; default: the last),
    rebuilt from the run's snapshots up to that step (:func:`posthoc_coefficients`).

    The floating-point tensors are combined in float64 and returned in their own dtype; any other tensor
    (an integer buffer) is the last snapshot's. Snapshots are read one at a time.
    """
    gamma = gamma_from_sigma_rel(sigma_rel)
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise ValueError(
            f"{run_dir}: has no post-hoc EMA snapshots (they are kept by training with, for example, "
            "--set train.posthoc_ema=[0.05,0.1])"
        )
    steps = [s.step for s in snapshots]
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(
            f"{run_dir}: has no post-hoc EMA snapshot of step {step} (they span {steps[0]}…{steps[-1]})"
        )
    used = [s for s in snapshots if s.step <= step]
    x, error = posthoc_coefficients(
        [s.step for s in used for _ in s.gammas], [g for s in used for g in s.gammas], step, gamma
    )
    files = [s.path / f"power-ema-{i}.safetensors" for s in used for i in range(len(s.gammas))]
    total: dict[str, torch.Tensor] = {}  # Σ x_i θ̂_i, tensor by tensor
    for coefficient, path in zip(x, files):
        tensors = ckpt.load_tensors(path)
        if total and {k: v.shape for k, v in tensors.items()} != {k: v.shape for k, v in total.items()}:
            raise ckpt.CheckpointError(f"{path}: holds other weights than {files[0]}")
        for name, value in tensors.items():
            if value.is_floating_point():
                total[name] = total.get(name, 0) + float(coefficient) * value.double()
            else:
                total[name] = value
    weights = {name: value.to(tensors[name].dtype) for name, value in total.items()}
    return Reconstruction(weights, sigma_rel, step, used, error)
