"""The random draws of the training loss: the timesteps and the classifier-free-guidance label dropout.

Guards two things no other test sees: that training draws every timestep t = 0 … T−1 (t = 0 is the paper's
t = 1, the step that trains the decoder end; an off-by-one in ``randint`` drops it or t = T−1 silently), and
that labels are dropped to the "no label" index with probability ``p_uncond`` (not 1 − p_uncond), the
others passed through unchanged.
"""

import math

import pytest
import torch
from torch import nn

from ddpm import training
from ddpm.engine.randomness import BatchDraws
from ddpm.presets import get_preset
from ddpm.schedules import make_schedule

NUM_CLASSES = 3  # the shapes3-cond preset's


def loss_fn_for(cfg, schedule, num_classes):
    """The training loss under test (the one place that names where it lives)."""
    return training.make_loss_fn(cfg, schedule, num_classes)


def draws(seed: int) -> BatchDraws:
    return BatchDraws(torch.Generator().manual_seed(seed))


class Recorder(nn.Module):
    """A stand-in network that records the timesteps and labels it is called with."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.ts: list[torch.Tensor] = []
        self.ys: list[torch.Tensor | None] = []

    def forward(self, x, t, y=None):
        self.ts.append(t.detach().clone())
        self.ys.append(None if y is None else y.detach().clone())
        return x * 0 + self.bias


def call_loss(p_uncond: float, T: int, b: int, seed: int, y: torch.Tensor | None = None):
    """Run the training loss once on a batch of b 2-D points; returns the recording model."""
    cfg = get_preset("shapes3-cond")
    cfg.diffusion.T = T
    cfg.diffusion.p_uncond = p_uncond
    schedule = make_schedule(cfg.diffusion.schedule, T=T)
    model = Recorder()
    x0 = torch.randn(b, 2, generator=torch.Generator().manual_seed(seed + 1))
    loss = loss_fn_for(cfg, schedule, NUM_CLASSES)(model, x0, y, draws(seed))
    assert loss.shape == (b,)
    loss.mean().backward()  # the recorder keeps the graph intact
    assert len(model.ts) == 1
    return model


@pytest.mark.parametrize("T", [2, 10])
def test_timesteps_cover_exactly_0_to_T_minus_1(T):
    b = 4000
    model = call_loss(p_uncond=0.0, T=T, b=b, seed=0)
    t = model.ts[0]
    assert t.shape == (b,)
    assert torch.equal(t, t.round()), "timesteps should be whole numbers"
    seen = sorted({int(v) for v in t.tolist()})
    assert seen == list(range(T)), f"timesteps drawn {seen}, expected exactly 0..{T - 1}"
    # …and uniformly: each count within 5 binomial standard deviations of b/T.
    counts = torch.bincount(t.long(), minlength=T).tolist()
    tol = 5 * math.sqrt(b * (1 / T) * (1 - 1 / T))
    assert all(abs(c - b / T) <= tol for c in counts), (
        f"counts {counts} not uniform (±{tol:.0f} of {b / T:.0f})"
    )


@pytest.mark.parametrize("p", [0.1, 0.15])  # mnist-cond's and shapes3-cond's p_uncond
def test_label_dropout_rate_and_kept_labels(p):
    n = 4000
    y = torch.randint(NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(7))
    model = call_loss(p_uncond=p, T=10, b=n, seed=3, y=y)
    seen = model.ys[0]
    assert seen is not None and seen.shape == y.shape
    dropped = seen == NUM_CLASSES
    # The fraction dropped lies within 5 binomial standard deviations of p (±0.024 for p = 0.1, n = 4,000).
    tol = 5 * math.sqrt(p * (1 - p) / n)
    frac = dropped.float().mean().item()
    assert abs(frac - p) <= tol, f"dropped {frac:.4f} of the labels, expected {p} ± {tol:.4f}"
    # Labels not dropped reach the network unchanged; a dropped one becomes exactly the "no label" index.
    assert torch.equal(seen[~dropped], y[~dropped])
    assert set(seen.unique().tolist()) <= set(range(NUM_CLASSES + 1))


def test_no_label_dropout_when_p_uncond_is_zero():
    y = torch.randint(NUM_CLASSES, (4000,), generator=torch.Generator().manual_seed(7))
    model = call_loss(p_uncond=0.0, T=10, b=4000, seed=3, y=y)
    assert torch.equal(model.ys[0], y)
