"""A run folder that defends itself: ``ddpm train`` writes only into a new or empty folder or a ddpm run,
checks everything before ``--restart`` removes anything (and then only what ddpm wrote), lets one process
at a time write a run, and resumes a run only with the config it was started with. Each refusal is one
``ddpm: error:`` line, exit status 2, and every file that was there is left byte for byte as it was."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddpm import training
from ddpm.cli import main
from ddpm.engine import checkpoint as ckpt
from tests.conftest import TINY

SETS = [arg for item in TINY for arg in ("--set", item)]


def train_argv(out, steps, *extra) -> list[str]:
    """``ddpm train spiral`` with the tiny settings of the engine's tests."""
    return ["train", "spiral", "--out", str(out), "--max-steps", str(steps), *SETS, *map(str, extra)]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (hidden ones too), files with their SHA-256."""
    return {
        str(p.relative_to(folder)): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def refused(capsys, argv) -> str:
    """Run the CLI; check exit status 2 and a stderr of exactly one ``ddpm: error:`` line; return it."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("ddpm: error: "), (code, err)
    return err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_argv(out, 10)) == 0
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of a real run, to damage or restart."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def another_tools_folder(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch=9.ckpt").write_bytes(b"lightning weights")
    (folder / "metrics.json").write_text('{"val_loss": 0.1}\n')
    (folder / "metrics.csv").write_text("epoch,val_loss\n9,0.1\n")
    return folder


# --------------------------------------------------------------------------- what --out may be


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "not a ddpm run and not empty (it holds checkpoints, metrics.csv, metrics.json)"),
        (["--restart"], "not a ddpm run and not empty (it holds checkpoints, metrics.csv, metrics.json)"),
        (
            ["--restart", "--set", "model.kwargs.bogus=1"],
            "model.kwargs.bogus is an unexpected keyword argument",
        ),
    ],
)
def test_another_tools_folder_is_refused_and_kept(tmp_path, capsys, flags, message):
    out = another_tools_folder(tmp_path / "out")
    before = snapshot(out)
    line = refused(capsys, train_argv(out, 10, *flags))
    assert message in line, line
    assert snapshot(out) == before


@pytest.mark.parametrize("ddpm_config", [False, True])
def test_someone_elses_config_json_is_refused(tmp_path, tiny_run, capsys, ddpm_config):
    """A config.json without checkpoints (even one ddpm could load) is not a run: it is never replaced."""
    out = tmp_path / "out"
    out.mkdir()
    if ddpm_config:
        shutil.copy(tiny_run / "config.json", out / "config.json")
    else:
        (out / "config.json").write_text('{"lr": 0.1, "layers": [64, 64]}\n')
    before = snapshot(out)
    line = refused(capsys, train_argv(out, 10))
    assert line == (
        f"ddpm: error: --out {out}: not a ddpm run and not empty (it holds config.json); "
        "choose a new or empty folder"
    )
    assert snapshot(out) == before


def test_a_new_path_or_an_empty_folder_becomes_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert main(train_argv(out, 2)) == 0
        assert (out / training.MARKER).is_file() and ckpt.latest_checkpoint(out).name == "step-00000002"


def test_a_run_older_than_the_marker_still_counts(run_copy, capsys):
    """config.json that loads as a ddpm config plus checkpoints: resumed, and marked from then on."""
    (run_copy / training.MARKER).unlink()
    (run_copy / training.LOCK).unlink()
    capsys.readouterr()
    assert main(train_argv(run_copy, 15)) == 0
    assert "resumed from step-00000010" in capsys.readouterr().out
    assert ckpt.latest_checkpoint(run_copy).name == "step-00000015" and (run_copy / training.MARKER).is_file()


# --------------------------------------------------------------------------- --restart


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "model.kwargs.bogus=1",
            "model.kwargs.bogus is an unexpected keyword argument of model 'mlp'",
        ),
        ("diffusion.T=0", "diffusion.T must be at least 1, got 0"),
        (
            "model.kwargs.num_classes=5",
            "the model is conditional on 5 classes but the data set has no labels",
        ),
    ],
)
def test_restart_checks_everything_before_it_removes_anything(run_copy, capsys, setting, message):
    """A restart that cannot start (a bad config, a model the data cannot feed) leaves the run whole."""
    before = snapshot(run_copy)
    line = refused(capsys, train_argv(run_copy, 10, "--restart", "--set", setting))
    assert message in line, line
    assert snapshot(run_copy) == before
    assert run_copy.joinpath(training.LOCK).read_bytes() == b""  # released


def test_restart_removes_only_what_ddpm_wrote(run_copy):
    foreign = {
        "notes.txt": b"my notes",
        "checkpoints/epoch=9.ckpt": b"lightning weights",
        "samples/mine.png": b"my picture",
        "eval/ddpm-20-n100-s0.json": b"{}",
    }
    for name, data in foreign.items():
        (run_copy / name).parent.mkdir(exist_ok=True)
        (run_copy / name).write_bytes(data)
    (run_copy / "checkpoints" / ".tmp-step-00000012-4242").mkdir()  # left by a killed process
    (run_copy / ".metrics.json.tmp-4242.json").write_text("{")
    assert main(train_argv(run_copy, 5, "--restart")) == 0
    assert all((run_copy / name).read_bytes() == data for name, data in foreign.items())
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["epoch=9.ckpt", "step-00000005"]
    assert sorted(p.name for p in (run_copy / "samples").iterdir()) == ["mine.png", "step-00000005.png"]
    assert not (run_copy / ".metrics.json.tmp-4242.json").exists()
    steps = [int(r.split(",")[0]) for r in (run_copy / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [5] and json.loads((run_copy / "metrics.json").read_text())["step"] == 5


# --------------------------------------------------------------------------- resuming


@pytest.mark.parametrize(
    "argv, differs",
    [
        (["train", "mnist-unet", "--out", "{run}"], "preset, data.name, data.n_samples and "),
        (train_argv("{run}", 20, "--set", "train.lr=3e-4"), "train.lr)"),
        (train_argv("{run}", 20, "--seed", "5"), "seed)"),
    ],
)
def test_resuming_with_another_config_is_refused(run_copy, capsys, argv, differs):
    before = snapshot(run_copy)
    line = refused(capsys, [a.replace("{run}", str(run_copy)) for a in argv])
    assert line.startswith(f"ddpm: error: --out {run_copy}: the run was started with another config (it ")
    assert f"differs in {differs}" in line, line
    resume = f"ddpm train {run_copy}/config.json --out {run_copy}"
    assert line.endswith(f"to resume it as it was: {resume}; to start over: --restart")
    assert snapshot(run_copy) == before


def test_resuming_with_new_budgets_or_its_own_config(run_copy):
    assert main(train_argv(run_copy, 15, "--max-minutes", "5")) == 0
    assert main(["train", str(run_copy / "config.json"), "--out", str(run_copy), "--max-steps", "20"]) == 0
    assert json.loads((run_copy / "metrics.json").read_text())["step"] == 20


# --------------------------------------------------------------------------- what train says


def test_train_says_what_it_wrote_and_what_next(tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(train_argv(out, 5, "--json")) == 0
    *_, summary, last = capsys.readouterr().out.strip().splitlines()
    assert summary == (
        f"wrote {out}: step 5 of 5 (checkpoints/step-00000005, metrics.json, samples/); "
        f"next: ddpm sample {out} --out points.png"
    )
    assert json.loads(last) == json.loads((out / "metrics.json").read_text())


def test_a_spent_time_budget_says_how_to_go_on(tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(train_argv(out, 100_000, "--max-minutes", "0.002")) == 0
    *_, stopped, summary = capsys.readouterr().out.strip().splitlines()
    step = ckpt.load_state(ckpt.latest_checkpoint(out))["step"]
    assert 0 < step < 100_000
    assert stopped == (
        f"stopped at step {step} of 100000: the time budget (--max-minutes 0.002) is spent; "
        "run the same command again to continue"
    )
    assert summary.startswith(f"wrote {out}: step {step} of 100000 ")


# --------------------------------------------------------------------------- eval report names


@pytest.mark.parametrize("name", ["../config", "../../../x", "a/b", ".."])
def test_eval_report_names_stay_in_the_run(run_copy, capsys, name):
    before = snapshot(run_copy.parent)
    line = refused(capsys, ["eval", run_copy, "--n", "10", "--name", name])
    assert line == (
        f"ddpm: error: --name {name}: not a plain file name (the report goes to RUN/eval/; no /, \\ or ..)"
    )
    assert snapshot(run_copy.parent) == before


# --------------------------------------------------------------------------- one writer


def _wait_for_lock(out: Path, pid: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        lock = out / training.LOCK
        if lock.exists() and lock.read_text().split()[:1] == [str(pid)]:
            return
        time.sleep(0.05)
    raise AssertionError(f"the first process never held the lock: {proc.stderr.read()[-2000:]}")


def test_one_writer_per_run(tmp_path, capsys):
    """A second ``ddpm train`` on a run being trained is refused, naming the first's PID (with --restart
    too, which removes nothing); once the first is killed with SIGKILL, a third takes the run over."""
    out = tmp_path / "run"
    argv = train_argv(out, 100_000, "--max-minutes", "1", "--set", "train.num_threads=1")
    first = subprocess.Popen(
        [sys.executable, "-m", "ddpm", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_lock(out, first.pid, first)
        for flags in ([], ["--restart"]):
            line = refused(capsys, [*argv, *flags])
            assert line == (
                f"ddpm: error: --out {out}: another ddpm train (PID {first.pid}) is training this run; "
                "wait for it to end, or stop it"
            )
        assert first.poll() is None  # still training, undisturbed
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert main(train_argv(out, 20, "--set", "train.num_threads=1")) == 0
    assert (out / training.LOCK).read_bytes() == b""  # released
