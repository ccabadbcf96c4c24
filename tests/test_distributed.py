"""Distributed training under torchrun: 2 CPU processes talking gloo, on the tiny spiral run.

Each job is started as a user would, ``python -m torch.distributed.run --standalone --nproc_per_node=2``.
Where a test needs to see inside the processes it starts this file as the entry point instead of ``ddpm``
(see the end of the file): the same CLI, plus hooks set through the environment that dump each rank's
weights, send one rank a SIGTERM, or make rank 0's checkpoint write fail.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm import training
from ddpm.cli import main
from ddpm.config import Config, apply_overrides
from ddpm.engine import checkpoint as ckpt
from ddpm.engine.trainer import Trainer
from ddpm.presets import get_preset
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20  # 1,000 points in global batches of 64: the runs cross an epoch boundary at step 15
SETTINGS = [*TINY, "data.n_samples=1000", "train.precision=fp32", "train.num_threads=1"]
PER_RANK = [*SETTINGS, "train.batch_size=32"]


def sets(settings):
    return [arg for item in settings for arg in ("--set", item)]


def torchrun(out, *, entry="ddpm", steps=STEPS, settings=PER_RANK, env=None, timeout=90):
    """``torchrun --standalone --nproc_per_node=2 -m ENTRY train spiral --out OUT ...``; returns the
    finished process (stdout and stderr as text) and its wall time."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", entry, "train", "spiral", "--out", str(out), "--max-steps", str(steps), *sets(settings)]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    return proc, time.monotonic() - t0


def final_tensors(out, name="model"):
    return ckpt.load_tensors(ckpt.latest_checkpoint(out) / f"{name}.safetensors")


def info(out, capsys):
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 2-process run of STEPS steps, each rank's final weights dumped beside it."""
    out = tmp_path_factory.mktemp("ddp") / "straight"
    proc, _ = torchrun(out, entry="tests.test_distributed", env={"DDPM_TEST_DUMP": str(out.parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ranks_hold_identical_weights(straight):
    ranks = [load_file(straight.parent / f"rank{r}.safetensors") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    saved = final_tensors(straight)  # the checkpoint holds the bare module's names (no DDP prefix)
    assert all(torch.equal(saved[k], ranks[0][k]) for k in saved)


def test_two_processes_match_one_with_the_global_batch(straight, tmp_path):
    """Per-rank batch 32 on 2 processes = batch 64 on one: the same samples and the same noise per sample
    (drawn by global position), the gradient averaged over the ranks."""
    cfg = apply_overrides(get_preset("spiral"), [*SETTINGS, "train.batch_size=64"])
    cfg.train.max_steps = STEPS
    training.train(cfg, tmp_path, log=lambda *_: None)
    for name in ("model", "ema"):
        a, b = final_tensors(straight, name), final_tensors(tmp_path, name)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 1e-6, (name, worst)  # float summation order only (measured: 6e-8)
    assert json.loads((tmp_path / "metrics.json").read_text())["images_seen"] == 64 * STEPS


def test_resume_under_ddp_continues_exactly(straight, tmp_path, capsys):
    """SIGTERM to rank 1 alone at step 12: both ranks stop there together and rank 0 checkpoints; the
    resumed job (the plain ``-m ddpm`` command) ends with the uninterrupted one's weights, EMA and log."""
    out = tmp_path / "run"
    proc, _ = torchrun(out, entry="tests.test_distributed", env={"DDPM_TEST_SIGTERM": "1:12"})
    assert proc.returncode != 0 and "interrupted" in proc.stderr, proc.stderr[-3000:]
    assert ckpt.latest_checkpoint(out).name == "step-00000012"
    shutil.copytree(out, tmp_path / "copy")  # for the world-size change below
    proc, _ = torchrun(out)  # the plain CLI: torchrun ... -m ddpm train spiral --out RUN ...
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"wrote {out}: step {STEPS}") == 1  # one report, from rank 0
    assert json.loads((out / "metrics.json").read_text())["images_seen"] == STEPS * 64
    a, b = info(straight, capsys), info(out, capsys)
    assert b["step"] == STEPS and b["world_size"] == 2
    assert (a["weights_tensors_sha256"], a["ema_tensors_sha256"]) == (
        b["weights_tensors_sha256"],
        b["ema_tensors_sha256"],
    )
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS

    # Resuming under another world size works: same step and data position, the new global batch.
    messages = []
    training.train(Config.load(out / "config.json"), tmp_path / "copy", log=messages.append)
    assert any("written by 2 process(es), this job has 1" in m for m in messages), messages
    c = info(tmp_path / "copy", capsys)
    assert c["step"] == STEPS and c["world_size"] == 1


def test_an_error_on_rank_zero_ends_the_job(tmp_path):
    """--out naming a file is found by rank 0 alone: every rank ends at once, non-zero, saying why."""
    (tmp_path / "file").write_text("keep me")
    proc, seconds = torchrun(tmp_path / "file")
    assert proc.returncode != 0 and seconds < 60
    assert "ddpm: error: --out" in proc.stderr and "is a file" in proc.stderr
    assert "ddpm: error: rank 0 failed: --out" in proc.stderr
    assert (tmp_path / "file").read_text() == "keep me"


def test_a_failed_checkpoint_write_on_rank_zero_stops_every_rank(tmp_path):
    """Rank 0's write fails at step 10 while rank 1 trains on: both stop at the next step, no hang."""
    proc, seconds = torchrun(
        tmp_path / "run", entry="tests.test_distributed", env={"DDPM_TEST_FAIL_SAVE": "10"}
    )
    assert proc.returncode != 0 and seconds < 60
    message = f"could not write checkpoint {tmp_path}/run/checkpoints/step-00000010: No space left on device"
    assert f"ddpm: error: {message}; there is no earlier checkpoint" in proc.stderr, proc.stderr[-3000:]
    assert f"ddpm: error: rank 0 failed: {message}" in proc.stderr
    assert ckpt.latest_checkpoint(tmp_path / "run") is None


def _worker() -> int:
    """One process of a test's torchrun job: ``ddpm``'s CLI with the hooks the environment asks for."""
    rank = int(os.environ["RANK"])
    fit, train_step, write = Trainer.fit, Trainer.train_step, ckpt.write_synced
    dump = os.environ.get("DDPM_TEST_DUMP")
    sigterm = os.environ.get("DDPM_TEST_SIGTERM")  # "rank:step"
    fail_save = os.environ.get("DDPM_TEST_FAIL_SAVE")  # rank 0's checkpoint of this step: a full disk

    def dumping_fit(self):
        summary = fit(self)
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()}, f"{dump}/rank{rank}.safetensors"
        )
        return summary

    def signalled_train_step(self):
        loss = train_step(self)
        if f"{self.rank}:{self.step}" == sigterm:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    def failing_write(path, data):
        if path.parent.name.startswith(f".tmp-step-{int(fail_save):08d}"):
            raise OSError(28, "No space left on device")
        write(path, data)

    if dump:
        Trainer.fit = dumping_fit
    if sigterm:
        Trainer.train_step = signalled_train_step
    if fail_save:
        ckpt.write_synced = failing_write
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_worker())
