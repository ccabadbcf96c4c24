"""The part-2 walkthrough notebooks (MNIST) run as scripts and write their figures.

Each notebook trains a handful of steps (``--steps``, with ``--minutes`` as a cap), then draws a handful of
samples with a few reverse steps; all four are started together (one torch thread each) and each test waits
for its own. MNIST comes from ``$DDPM_DATA`` when that is set, else from a cache shared by the session
(``/tmp/ddpm-data``), which the library fills on first use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from PIL import Image

from ddpm.data.images import fetch
from tests.notebook_runner import finish as run_finish
from tests.notebook_runner import launch

TIMEOUT_S = 300
SAMPLE_STEPS = 5
FAST = ["--samples", "4", "--sample-steps", str(SAMPLE_STEPS), "--log-every", "1"]
FIGURES = [
    "loss.png",
    "denoising.png",
    "samples.png",
    "reverse_process.gif",
    "reverse_x0_guess.gif",
    "reverse_snapshots.png",
]

# A handful of training steps: what the tests check needs no more, and a step budget ends training there
# instead of spending the whole time budget (which stays, as a cap for a slow machine).
SMALL = ["--minutes", "0.1", "--steps", "5"]
# notebook -> (extra arguments, files it must write)
CASES = {
    "2_1_mnist": ([*SMALL, *FAST], FIGURES),
    "2_2_mnist": ([*SMALL, *FAST], [*FIGURES, "error_by_t.png"]),
    # The big UNet takes about a second a step here: three steps, under a longer cap.
    "2_3_unet": (["--minutes", "0.15", "--steps", "3", *FAST], [*FIGURES, "schedules.png"]),
    "2_5_fid": (
        [*SMALL, "--n", "200", "--sample-steps", str(SAMPLE_STEPS), "--log-every", "1"],
        ["loss.png", "fld_bars.png", "fld_vs_n.png", "class_histogram.png", "samples_by_class.png"],
    ),
}
TEST_OF = {name: f"test_{name}" for name in CASES}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory, mnist_lenet):
    """Start every selected notebook at once; yields {name: (process, out folder, log file)}."""
    data = os.environ.get("DDPM_DATA") or "/tmp/ddpm-data"
    fetch("mnist", root=data, progress=False)  # once, here, rather than by each notebook at once
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "DDPM_DATA": data}
    yield from launch(request, tmp_path_factory, CASES, TEST_OF, env)


def finish(launched, name: str) -> tuple[Path, str]:
    """Wait for notebook ``name``; assert it succeeded and wrote its files; returns (figures folder, log)."""
    # One GIF frame per reverse step (identical neighbours could be merged, so allow one less).
    figs, text = run_finish(launched, name, CASES[name][1], TIMEOUT_S, min_frames=SAMPLE_STEPS - 1)
    assert (figs / "run" / "config.json").is_file()
    return figs, text


def assert_samples(figs: Path, n: int = 4) -> None:
    """samples.png is a square grid of ``n`` 28×28 digits (``save_grid``: 2-pixel gaps, doubled in size)."""
    cols = math.ceil(math.sqrt(n))
    side = 2 * (cols * (28 + 2) + 2)
    with Image.open(figs / "samples.png") as im:
        assert im.size == (side, side)


@pytest.mark.slow
def test_2_1_mnist(launched):
    figs, text = finish(launched, "2_1_mnist")
    assert "53,921 parameters" in text  # the series' UNet without time
    assert_samples(figs)


@pytest.mark.slow
def test_2_2_mnist(launched):
    figs, text = finish(launched, "2_2_mnist")
    assert "61,313 parameters" in text  # the same UNet with a time embedding
    assert "no run of notebook 2.1 to compare with" in text  # each test has its own --out
    assert_samples(figs)


@pytest.mark.slow
def test_2_3_unet(launched):
    figs, text = finish(launched, "2_3_unet")
    assert "1,112,801 parameters" in text
    assert "AttentionBlock  (64, 7, 7)" in text  # the block-by-block trace
    assert_samples(figs)


@pytest.mark.slow
def test_2_5_fid(launched):
    figs, text = finish(launched, "2_5_fid")
    scores = {
        line.split()[1]: float(line.split()[-4])
        for line in text.splitlines()
        if line.startswith("FLD ") and "(N = 200)" in line
    }
    assert set(scores) == {"generated", "training", "uniform"}
    # A few seconds of training draw blobs: worse than real digits, and the floor is far below noise.
    assert scores["training"] < scores["generated"] and scores["training"] < scores["uniform"] / 10
    assert "class entropy" in text
