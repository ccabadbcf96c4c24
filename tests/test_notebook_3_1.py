"""Notebook 3.1 (classifier-free guidance on three overlapping 2-D shapes) runs as a script, and guidance
does what it is for: it moves a conditional model's samples onto the shape that was asked for."""

from __future__ import annotations

import os

import pytest
import torch

from ddpm.data.toy import shapes3_curves
from ddpm.presets import get_preset
from ddpm.run import load_run, sample, sampling_config
from ddpm.training import train
from tests.notebook_runner import finish, launch

TIMEOUT_S = 120
NAME = "3_1_guidance_2d"
CASES = {
    NAME: (
        ["--steps", "30", "--n", "100", "--sample-steps", "20"],
        [
            "data.png",
            "unconditional.png",
            "guidance_grid.png",
            "guidance_sweep.png",
            "guidance_sweep.gif",
            "run/loss.png",
            "run/config.json",
        ],
    ),
}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    yield from launch(request, tmp_path_factory, CASES, {NAME: "test_3_1_guidance_2d"}, env)


def test_3_1_guidance_2d(launched):
    # run/ is written by the engine, which does not print "wrote" for its config.
    _, text = finish(launched, NAME, CASES[NAME][1], TIMEOUT_S, min_frames=9, unreported=("run/config",))
    table = [line.split() for line in text.splitlines() if line.startswith(("spiral ", "s-curve ", "moons "))]
    assert [(row[0], row[1]) for row in table] == [
        (name, w) for name in ("spiral", "s-curve", "moons") for w in ("0", "1", "3")
    ]
    assert all(0 <= float(row[3]) <= 1 for row in table)
    assert "unconditional samples" in text


def _nearer_another_curve(points: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of samples closer to another class's curve than to the curve of their own class."""
    curves = [torch.from_numpy(c) for c in shapes3_curves(4001)]
    d = torch.stack([torch.cdist(points.double(), c).min(1).values for c in curves], 1)
    return (d.argmin(1) != labels).double().mean().item()


@pytest.mark.slow
def test_guidance_moves_samples_onto_their_class(tmp_path):
    """1,000 steps of ``shapes3-cond`` (15-20 s on one thread of a busy machine) leave a conditional model
    that still draws about 40 % of its samples nearer another class's shape; guidance with w = 3 cuts that to
    about 25 % (9 training seeds: ratio 0.56-0.69). w = 1 lies in between (ratio 0.75-0.82).

    The mean distance to the class's own curve is no robust check at this budget: with w = 3 it was larger
    than with w = 0 for the spiral in 5 of the 6 seeds (guidance overshoots thin curves; see notebook 3.1).
    """
    cfg = get_preset("shapes3-cond")
    cfg.train.max_steps = 1000
    cfg.train.sample_n = 100
    train(cfg, tmp_path / "run", log=lambda *_: None)
    run = load_run(tmp_path / "run")
    run.cfg = sampling_config(run.cfg, steps=50)
    labels = torch.arange(3).repeat_interleave(400)
    rate = {
        w: _nearer_another_curve(
            sample(run.cfg, run.model, run.schedule, len(labels), seed=1, label=labels, guidance=w), labels
        )
        for w in (0.0, 1.0, 3.0)
    }
    assert rate[3.0] < 0.8 * rate[0.0], rate
    assert rate[3.0] < rate[1.0] < rate[0.0], rate
