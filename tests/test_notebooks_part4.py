"""The part-4 notebooks (editing, likelihood) run as scripts on a run trained for three steps (``--train``:
never the pretrained model), with few reverse steps and few digits."""

from __future__ import annotations

import os

import pytest

from tests.notebook_runner import finish, launch

TIMEOUT_S = 300
SMALL = ["--train", "--minutes", "0.1", "--steps", "3", "--sample-steps", "4", "--log-every", "1"]
CASES = {
    "4_1_editing": (
        [*SMALL, "--n", "2", "--resample", "2", "--jump-length", "2"],
        ["loss.png", "inpainting.png", "sdedit.png", "inversion.png", "interpolation.png"],
    ),
    "4_2_likelihood": ([*SMALL, "--n", "2"], ["loss.png", "nll_vs_vlb.png"]),
}
TEST_OF = {name: f"test_{name}" for name in CASES}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    data = os.environ.get("DDPM_DATA") or "/tmp/ddpm-data"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "DDPM_DATA": data}
    yield from launch(request, tmp_path_factory, CASES, TEST_OF, env)


@pytest.mark.slow
def test_4_1_editing(launched):
    _, text = finish(launched, "4_1_editing", CASES["4_1_editing"][1], TIMEOUT_S, min_frames=0)
    assert "inversion (refine 3): mean |reconstruction − digit|" in text


@pytest.mark.slow
def test_4_2_likelihood(launched):
    _, text = finish(launched, "4_2_likelihood", CASES["4_2_likelihood"][1], TIMEOUT_S, min_frames=0)
    assert "ODE NLL:" in text and "bound:" in text
