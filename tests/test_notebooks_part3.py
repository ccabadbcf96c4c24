"""Notebook 3.2 (classifier-free guidance on MNIST) runs as a script: three training steps, tiny
grids, and the FLD/precision sweep over guidance weights on 20 samples each."""

from __future__ import annotations

import os

import pytest

from tests.notebook_runner import finish, launch

TIMEOUT_S = 300
WEIGHTS = ("0", "1", "2", "3", "5")
CASES = {
    "3_2_mnist_guidance": (
        # Three training steps (the time budget stays, as a cap): enough to draw and measure something.
        ["--minutes", "0.1", "--steps", "3", "--n", "20", "--sample-steps", "3", "--per-class", "1"]
        + ["--log-every", "1"],
        ["loss.png", "guidance_metrics.png", *(f"guidance_w{w}.png" for w in WEIGHTS)],
    ),
}
TEST_OF = {"3_2_mnist_guidance": "test_3_2_mnist_guidance"}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory, mnist_lenet):
    data = os.environ.get("DDPM_DATA") or "/tmp/ddpm-data"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "DDPM_DATA": data}
    yield from launch(request, tmp_path_factory, CASES, TEST_OF, env)


@pytest.mark.slow
def test_3_2_mnist_guidance(launched):
    name = "3_2_mnist_guidance"
    figs, text = finish(launched, name, CASES[name][1], TIMEOUT_S, min_frames=0)
    lines = [line for line in text.splitlines() if line.startswith("w = ")]
    assert [line.split(":")[0] for line in lines] == [f"w = {w}" for w in WEIGHTS]
    assert all("precision" in line and "floor" in line for line in lines)
