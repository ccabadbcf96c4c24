"""The part-1 walkthrough notebooks run as scripts and write their figures.

Each notebook runs in its own subprocess with ``--out`` in a temporary folder. They are started together
(one torch thread each) so that their start-up — mostly importing torch, scipy and matplotlib — overlaps,
and each test then waits for its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.notebook_runner import finish as run_finish
from tests.notebook_runner import launch

TIMEOUT_S = 300

# notebook -> (extra arguments, files it must write)
CASES = {
    "1_1_spiral": ([], ["spiral.png", "toy_datasets.png"]),
    "1_2_gaussian_diffusion": (
        [],
        [
            "noising_linear.png",
            "noising_cosine.png",
            "forward_linear.gif",
            "forward_cosine.gif",
            "posterior_walk_linear.gif",
            "posterior_walk_linear.png",
        ],
    ),
    "1_3_train_denoiser": (
        ["--steps", "20", "--n", "500"],  # a short training: the test checks the figures, not the fit
        [
            "run/loss.png",
            "run/metrics.json",
            "samples.png",
            "reverse_process.gif",
            "reverse_x0_guess.gif",
            "reverse_snapshots.png",
            "reverse_x0_guesses.png",
        ],
    ),
    "1_4_plot_coefficients": ([], ["coefficients.png", "alpha_bar_vs_T.png"]),
}
TEST_OF = {
    "1_1_spiral": "test_1_1_spiral",
    "1_2_gaussian_diffusion": "test_1_2_gaussian_diffusion",
    "1_3_train_denoiser": "test_1_3_train_denoiser",
    "1_4_plot_coefficients": "test_1_4_plot_coefficients",
}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    """Start every selected notebook at once; yields {name: (process, out folder, log file)}."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    yield from launch(request, tmp_path_factory, CASES, TEST_OF, env)


def finish(launched, name: str) -> tuple[Path, str]:
    """Wait for notebook ``name``; assert it succeeded and wrote its files; returns (figures folder, log)."""
    # run/ is written by the engine, which does not print "wrote".
    return run_finish(launched, name, CASES[name][1], TIMEOUT_S, min_frames=10, unreported=("run/",))


def test_1_1_spiral(launched):
    _, text = finish(launched, "1_1_spiral")
    assert "(10000, 2) points" in text


def test_1_2_gaussian_diffusion(launched):
    _, text = finish(launched, "1_2_gaussian_diffusion")
    # Every torch-vs-NumPy cross-check printed a tiny difference.
    diffs = [
        float(line.rsplit("=", 1)[1].split(",")[0]) for line in text.splitlines() if "|torch - numpy|" in line
    ]
    assert len(diffs) >= 8 and max(diffs) < 1e-10, diffs


@pytest.mark.slow
def test_1_3_train_denoiser(launched):
    figs, text = finish(launched, "1_3_train_denoiser")
    assert "trained model" in text and "energy_distance_floor" in text
    assert (figs / "run" / "config.json").is_file()


def test_1_4_plot_coefficients(launched):
    _, text = finish(launched, "1_4_plot_coefficients")
    assert "sqrt(alpha_bar_T) = 6.35e-03" in text  # the linear schedule at T = 1000
