"""Notebook 2.4 (train LeNet-5; its accuracy and its mistakes) runs as a script and writes its figures.

It trains two epochs on 3,000 MNIST digits: a few seconds, for about 92 % (chance is 10 %).
"""

from __future__ import annotations

import os
import re

import pytest

from ddpm.data.images import fetch
from tests.notebook_runner import finish, launch

TIMEOUT_S = 120
CASES = {
    "2_4_lenet": (
        ["--epochs", "2", "--train-subset", "3000", "--batch-size", "32"],
        ["training.png", "misclassified.png", "confusion.png"],
    ),
}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    data = os.environ.get("DDPM_DATA") or "/tmp/ddpm-data"
    fetch("mnist", root=data, progress=False)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "DDPM_DATA": data}
    yield from launch(request, tmp_path_factory, CASES, {"2_4_lenet": "test_2_4_lenet"}, env)


@pytest.mark.slow
def test_2_4_lenet(launched):
    _, text = finish(launched, "2_4_lenet", CASES["2_4_lenet"][1], TIMEOUT_S, min_frames=1)
    assert "61,706 parameters" in text
    assert "3,000 training and 10,000 test images, 2 epochs" in text
    accuracy = float(re.search(r"test accuracy ([\d.]+) %", text).group(1))
    assert accuracy > 80, text[-2000:]  # chance is 10 %
