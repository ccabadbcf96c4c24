"""What the CLI says when it cannot do what was asked: sampling that cannot give good samples (guidance
that is not a finite w ≥ 0, η for a sampler that has none, weights whose samples are not finite, outputs that
cannot be written, checked before minutes of sampling, Ctrl-C); training whose disk fills up, whose log
was replaced, or whose loss explodes without becoming NaN; and ``ddpm info`` saying what its numbers are.

Each refusal is one ``ddpm: error:`` line, exit status 2, and nothing written."""

import errno
import re
import shutil

import pytest
import safetensors.torch
import torch

from ddpm import fileio, run
from ddpm.cli import main
from ddpm.engine import checkpoint as ckpt
from tests.test_faults import _resum, refused, snapshot, train_argv


@pytest.fixture(scope="module")
def points_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample-faults") / "run"
    assert main(train_argv(out, 10)) == 0
    return out


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample-faults") / "cond"
    assert main([*train_argv(out, 2)[:1], "shapes3-cond", *train_argv(out, 2)[2:]]) == 0
    return out


def sample_argv(run_dir, out, *more):
    return ["sample", str(run_dir), "--n", "8", "--out", str(out), *map(str, more)]


@pytest.mark.parametrize(
    "guidance, message",
    [
        ("nan", "--guidance nan: the weight w must be a finite number ≥ 0"),
        ("inf", "--guidance inf: the weight w must be a finite number ≥ 0"),
        ("-100", "--guidance -100.0: the weight w must be a finite number ≥ 0"),
    ],
)
def test_guidance_must_be_finite_and_not_negative(labelled_run, tmp_path, capsys, guidance, message):
    line = refused(
        capsys, sample_argv(labelled_run, tmp_path / "x.png", "--label", 1, "--guidance", guidance)
    )
    assert message in line
    assert not (tmp_path / "x.png").exists()


def test_eta_is_refused_for_a_sampler_without_it(points_run, tmp_path, capsys):
    line = refused(capsys, sample_argv(points_run, tmp_path / "x.png", "--sampler", "ddpm", "--eta", 0.5))
    assert "--eta 0.5: only the ddim sampler takes η, not ddpm" in line
    assert main(sample_argv(points_run, tmp_path / "x.png", "--sampler", "ddim", "--eta", 0.5)) == 0


def test_weights_that_sample_nan_are_refused_and_nothing_is_written(points_run, tmp_path, capsys):
    """EMA weights damaged into NaN, with their checksums rewritten to match (what the integrity check
    cannot see): the samples are checked before anything is written."""
    out = tmp_path / "run"
    shutil.copytree(points_run, out)
    latest = ckpt.latest_checkpoint(out)
    tensors = ckpt.load_tensors(latest / "ema.safetensors")
    tensors = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    (latest / "ema.safetensors").write_bytes(safetensors.torch.save(tensors))
    _resum(latest)
    for target in ("x.png", "x.npy"):
        line = refused(capsys, sample_argv(out, tmp_path / target), alone=False)
        assert "sampled values are not finite" in line and "nothing was written" in line
        assert not (tmp_path / target).exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", "{tmp}/x.jpg"], "--out {tmp}/x.jpg: write a .png or .npy file"),
        (["--out", "{tmp}/x"], "--out {tmp}/x: write a .png or .npy file"),
        (["--out", "/sys/x.png"], "--out /sys/x.png: cannot write in /sys"),
        (["--out", "{tmp}/x.png", "--gif", "{tmp}/x.png"], "--gif {tmp}/x.png: write a .gif file"),
        (["--out", "{tmp}/x.png", "--gif", "/sys/x.gif"], "--gif /sys/x.gif: cannot write in /sys"),
    ],
)
def test_outputs_are_checked_before_sampling(points_run, tmp_path, capsys, monkeypatch, flags, message):
    """A file that could not be written is refused before any sampling, and no output (PNG included) is left
    when the GIF cannot be written."""

    def never(*args, **kwargs):
        raise AssertionError("sampled before the outputs were checked")

    monkeypatch.setattr(run, "sample", never)
    flags = [f.format(tmp=tmp_path) for f in flags]
    line = refused(capsys, ["sample", str(points_run), "--n", "8", *flags])
    assert message.format(tmp=tmp_path) in line
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_sampling_does_not_talk_of_checkpoints(points_run, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "sample", interrupted)
    assert main(sample_argv(points_run, tmp_path / "x.png")) == 130
    err = capsys.readouterr().err
    assert "ddpm: sample interrupted; nothing more was written" in err and "checkpoint" not in err


def test_a_full_disk_names_the_file(points_run, tmp_path, capsys, monkeypatch):
    """No space left while writing the config (start of training) or the samples: the message names the
    file, and nothing half-written is left."""

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "write_synced", full)
    out = tmp_path / "new"
    line = refused(capsys, train_argv(out, 2), alone=False)
    assert re.search(rf"could not write {re.escape(str(out))}/\S+: No space left on device", line), line
    assert not (out / "config.json").exists() and not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_sampling_shows_progress(points_run, tmp_path, monkeypatch):
    seen = {}
    real = run.progress_bar

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(run, "progress_bar", spy)
    assert main(sample_argv(points_run, tmp_path / "x.png")) == 0
    assert seen["disable"] is False and seen["desc"] == "sampling"


def test_info_names_its_checksums_and_explains_a_negative_nll(points_run, capsys):
    before = snapshot(points_run)
    assert main(["info", str(points_run)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train_seconds: \d+\.\d\n", out)
    assert "weights_tensors_sha256" in out and "ema_tensors_sha256" in out and "equal iff the weights" in out
    assert "it can be negative" in out
    assert snapshot(points_run) == before


def test_sample_help_says_the_defaults():
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        main(["sample", "--help"])
    help_text = " ".join(text.getvalue().split())
    assert "how many samples (default 64)" in help_text
    assert "same seed, same samples" in help_text
    assert "the EMA of the weights" in help_text


def test_a_full_disk_at_the_end_of_training_names_the_file(tmp_path, capsys, monkeypatch):
    """No space left when metrics.json is written, after training: the message names it, the checkpoint
    of the finished run is kept."""
    real = fileio.write_synced

    def full_for_metrics(path, data):
        if "metrics.json" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(fileio, "write_synced", full_for_metrics)
    out = tmp_path / "run"
    line = refused(capsys, train_argv(out, 10), alone=False)
    assert f"could not write {out / 'metrics.json'}: No space left on device" in line
    assert not (out / "metrics.json").exists() and ckpt.latest_checkpoint(out).name == "step-00000010"


def test_a_log_with_foreign_columns_is_refused_on_resume(points_run, tmp_path, capsys):
    """A metrics.csv whose columns are not ours (replaced by another tool): resuming says so in one line
    instead of failing after training, and changes nothing."""
    out = tmp_path / "run"
    shutil.copytree(points_run, out)
    (out / "metrics.csv").write_text("epoch,val_loss\n9,0.1\n")
    before = snapshot(out)
    line = refused(capsys, ["train", out / "config.json", "--out", out, "--max-steps", 20], alone=False)
    assert f"{out / 'metrics.csv'}: not this run's log (its columns are epoch, val_loss)" in line
    assert snapshot(out) == before


def test_mnist_tiny_at_a_learning_rate_of_1000_stops_as_diverged(tmp_path, capsys):
    """The issue's case: the loss explodes to ~1e3–1e7 and stays finite; training stops at the third log
    line instead of running on to white samples."""
    from tests.conftest import DATA

    out = tmp_path / "run"
    argv = ["train", "mnist-tiny", "--out", out, "--max-steps", 200, "--set", f"data.root={DATA}"]
    line = refused(capsys, [*argv, "--set", "train.lr=1e3", "--set", "train.log_every=10"], alone=False)
    assert "the loss stayed above 100 × its best" in line and "at step 30;" in line
    assert ckpt.list_checkpoints(out) == []
