"""A training process killed with SIGKILL at random moments and re-run each time ends bit-identical to one
that was never interrupted: the same weights and EMA (data order, random draws, optimiser, EMA and learning
rate all continue exactly)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ddpm.cli import main
from ddpm.engine import checkpoint as ckpt
from tests.conftest import TINY

STEPS = 500  # enough that the third kill still lands before the end on a fast CPU
WAIT = 600  # seconds: a loaded machine can take minutes to start Python and torch; only a stuck run fails
# Checkpoint every 3 steps so that kills land during writes too.
ARGS = ["--max-steps", str(STEPS)]
ARGS += [
    arg for item in [*TINY, "train.checkpoint_every=3", "train.num_threads=1"] for arg in ("--set", item)
]


def train(out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ddpm", "train", "spiral", "--out", str(out), *ARGS]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def latest_step(out) -> int:
    found = ckpt.latest_checkpoint(out)
    return -1 if found is None else int(found.name[len(ckpt.PREFIX) :])


def info(out, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path, capsys):
    """Three SIGKILLs, each at a random moment after the process has trained on past where it started
    (mid-step or mid-write), then a last run to the end: same hashes as the uninterrupted run. About 35 s."""
    rng = random.Random(0)
    out = tmp_path / "killed"
    killed_at = []
    for _ in range(3):
        start, proc = latest_step(out), train(out)
        deadline = time.monotonic() + WAIT
        while latest_step(out) <= start and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert latest_step(out) > start or proc.poll() is not None, f"no checkpoint past {start} in {WAIT} s"
        time.sleep(rng.uniform(0.0, 0.5))
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        killed_at.append(latest_step(out))
    assert killed_at == sorted(set(killed_at)) and 0 < killed_at[-1] < STEPS  # each run went on from the last
    final = train(out)
    assert final.wait(timeout=WAIT) == 0, final.stderr.read()[-2000:]
    assert main(["train", "spiral", "--out", str(tmp_path / "straight"), *ARGS]) == 0
    a, b = info(tmp_path / "straight", capsys), info(out, capsys)
    assert a["step"] == b["step"] == STEPS
    assert (a["weights_tensors_sha256"], a["ema_tensors_sha256"]) == (
        b["weights_tensors_sha256"],
        b["ema_tensors_sha256"],
    )
