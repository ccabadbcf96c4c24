"""A training process killed with SIGKILL at any moment leaves its run folder resumable."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import TINY

# Checkpoint every 3 steps so that kills land during writes too.
ARGS = [arg for item in [*TINY, "train.checkpoint_every=3", "train.num_threads=1"] for arg in ("--set", item)]


def train(out, steps):
    cmd = [
        sys.executable,
        "-m",
        "ddpm",
        "train",
        "spiral",
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        *ARGS,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def info(out):
    cmd = [sys.executable, "-m", "ddpm", "info", str(out), "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    rng = random.Random(0)
    steps = 400
    straight = train(tmp_path / "straight", steps)
    assert straight.wait(timeout=120) == 0, straight.stderr.read()
    out = tmp_path / "killed"
    kills = 0
    for _ in range(3):
        proc = train(out, steps)
        time.sleep(rng.uniform(2.5, 5.0))  # start-up takes ~2 s; the kill lands during training or a write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    final = train(out, steps)
    assert final.wait(timeout=120) == 0, final.stderr.read()
    assert kills >= 1
    a, b = info(tmp_path / "straight"), info(out)
    assert b["step"] == steps
    # The resumed run continues exactly: the same weights and EMA as the uninterrupted one.
    assert (a["weights_sha256"], a["ema_sha256"]) == (b["weights_sha256"], b["ema_sha256"])
