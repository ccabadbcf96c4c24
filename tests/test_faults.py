"""Faults and hostile input, through the command line: a failed checkpoint write, a diverging loss, and
damaged, foreign or booby-trapped checkpoints and files. Each is answered with one ``ddpm: error:`` line
and exit status 2, and leaves what was on disk as it was."""

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm import run, training
from ddpm.cli import main
from ddpm.config import Config
from ddpm.engine import checkpoint as ckpt
from ddpm.engine.trainer import finite
from tests.conftest import TINY

SETS = [arg for item in TINY for arg in ("--set", item)]


def train_argv(out, steps, *settings, preset="spiral"):
    """``ddpm train``; the spiral preset with the tiny settings of the engine's tests."""
    sets = [arg for item in settings for arg in ("--set", item)]
    return [
        "train",
        preset,
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        *(SETS if preset == "spiral" else []),
        *sets,
    ]


def refused(capsys, argv, alone=True) -> str:
    """Run the CLI; check that it exits with status 2 and one error line, and return that line.

    ``alone``: nothing else on stderr (refusals before training starts); otherwise progress bars may
    precede it, but the error line is the last.
    """
    capsys.readouterr()
    code = main([str(a) for a in argv])
    lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
    errors = [line for line in lines if line.startswith("ddpm: error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], (code, lines)
    assert not alone or len(lines) == 1, lines
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: equal before and after means nothing was touched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- failed checkpoint writes


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_checkpoint_write_stops_and_keeps_the_previous_one(tmp_path, capsys, monkeypatch, code):
    """The write of step 20 fails (a full disk, a folder turned read-only): training stops there, saying
    which checkpoint is kept; step 10 is intact, no partial write is left, and a re-run resumes from it."""
    write = ckpt.write_synced

    def failing(path, data):
        if "step-00000020" in path.parent.name:
            raise OSError(code, os.strerror(code))
        write(path, data)

    monkeypatch.setattr(ckpt, "write_synced", failing)
    out = tmp_path / "run"
    line = refused(capsys, train_argv(out, 30), alone=False)
    assert line == (
        f"ddpm: error: could not write checkpoint {out}/checkpoints/step-00000020: {os.strerror(code)}; "
        "the previous checkpoint step-00000010 is kept"
    )
    assert [p.name for p in ckpt.checkpoint_dir(out).iterdir()] == ["step-00000010"]
    assert run.load_run(out).step == 10 and not (out / "metrics.json").exists()
    monkeypatch.setattr(ckpt, "write_synced", write)
    assert main(train_argv(out, 30)) == 0
    assert run.load_run(out).step == 30


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(out, 10)) == 0
    ckpt.checkpoint_dir(out).chmod(0o500)
    try:
        line = refused(capsys, train_argv(out, 20), alone=False)
    finally:
        ckpt.checkpoint_dir(out).chmod(0o700)
    assert "Permission denied; the previous checkpoint step-00000010 is kept" in line
    assert [p.name for p in ckpt.checkpoint_dir(out).iterdir()] == ["step-00000010"]


def test_a_failed_metrics_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from ddpm import fileio

    def full(path, data):
        Path(path).write_bytes(data[:1])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "write_synced", full)
    (tmp_path / "m.json").write_text("old")
    with pytest.raises(OSError, match="No space"):
        fileio.atomic_write_text(tmp_path / "m.json", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"] and (tmp_path / "m.json").read_text() == "old"


# --------------------------------------------------------------------------- divergence


def poison_from(monkeypatch, bad_step: int, factor: float = float("nan")) -> None:
    """Multiply the training loss by ``factor`` (NaN: make it NaN) from step ``bad_step`` on (counted from 1,
    as in the log)."""
    make = training.make_loss_fn

    def poisoned(*args, **kwargs):
        loss_fn, calls = make(*args, **kwargs), [0]

        def loss(model, x, y, draws):
            calls[0] += 1
            value = loss_fn(model, x, y, draws)
            return value * factor if calls[0] >= bad_step else value

        return loss

    monkeypatch.setattr(training, "make_loss_fn", poisoned)


@pytest.mark.parametrize(
    "bad_step, message",
    [
        (9, "the loss became nan at step 9"),  # seen by the log line of step 10
        (11, "the weights are no longer finite at step 12 (the loss diverged)"),  # seen by the checkpoint
    ],
)
def test_divergence_stops_with_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, bad_step, message):
    """A NaN loss stops training with one line naming the step; no checkpoint holds a non-finite weight;
    lowering the learning rate in the run's config.json and re-running goes on from the last good one."""
    out, settings = tmp_path / "run", ("train.log_every=10", "train.checkpoint_every=4")
    poison_from(monkeypatch, bad_step)
    line = refused(capsys, train_argv(out, 20, *settings), alone=False)
    assert line == (
        f"ddpm: error: {message}; training stopped and the last good checkpoint step-00000008 is kept "
        f"(to go on from it, lower train.lr in {out / 'config.json'} and run "
        f"ddpm train {out / 'config.json'} --out {out})"
    )
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000004", "step-00000008"]
    for weights in ("model", "ema"):
        assert finite(run.load_run(out, weights=weights).model)
    monkeypatch.undo()
    cfg = Config.load(out / "config.json")
    cfg.train.lr /= 10
    cfg.save(out / "config.json")
    assert main(["train", str(out / "config.json"), "--out", str(out)]) == 0  # the run's own config
    assert run.load_run(out).step == 20 and Config.load(out / "config.json").train.lr == cfg.train.lr


def test_a_finite_loss_far_above_its_best_stops_training_too(tmp_path, capsys, monkeypatch):
    """A loss that explodes but stays finite (too high a learning rate) is stopped like a NaN: three log
    lines in a row above 100 × the run's best; no checkpoint is written once the loss is that high."""
    out, settings = tmp_path / "run", ("train.log_every=2", "train.checkpoint_every=4")
    poison_from(monkeypatch, 11, factor=1e6)
    line = refused(capsys, train_argv(out, 40, *settings), alone=False)
    assert "the loss stayed above 100 × its best" in line and "for 3 log lines" in line
    assert "at step 16; training stopped and the last good checkpoint step-00000008 is kept" in line
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000004", "step-00000008"]


def test_a_loss_spike_below_the_rule_does_not_stop_training(tmp_path, monkeypatch):
    """Two log lines far above the best, then back to normal: training goes on to the end."""
    poison_from(monkeypatch, 11, factor=1e6)
    real = training.make_loss_fn

    def spike(*args, **kwargs):
        loss_fn, calls = real(*args, **kwargs), [0]

        def loss(model, x, y, draws):
            calls[0] += 1
            return loss_fn(model, x, y, draws) / (1e6 if calls[0] > 14 else 1)

        return loss

    monkeypatch.setattr(training, "make_loss_fn", spike)
    assert main(train_argv(tmp_path / "run", 20, "train.log_every=2", "train.checkpoint_every=4")) == 0


# --------------------------------------------------------------------------- hostile checkpoints


class Bomb:
    """Unpickling this creates ``marker``: a stand-in for a pickle built to run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_bomb(marker: Path) -> bytes:
    return pickle.dumps({"w": Bomb(marker)})


def torch_bomb(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": Bomb(marker)}, buffer)  # the zip format of .pt/.pth/.ckpt files, a pickle inside
    return buffer.getvalue()


def test_the_bombs_are_live(tmp_path):
    pickle.loads(pickle_bomb(tmp_path / "a"))
    torch.load(io.BytesIO(torch_bomb(tmp_path / "b")), weights_only=False)
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()


def _each(folder: Path, pattern: str, change) -> None:
    for path in folder.glob(pattern):
        path.write_bytes(change(path.read_bytes()))


def _resum(folder: Path) -> None:
    """Rewrite SHA256SUMS to match the files: damage made on purpose, past the checksum, to the parser."""
    sums = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name != ckpt.SUMS
    }
    (folder / ckpt.SUMS).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))


def _flip(data: bytes) -> bytes:
    return data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]


def _another_models_checkpoint(run_dir: Path, latest: Path) -> None:
    cfg = Config.load(run_dir / "config.json")
    cfg.model.kwargs["hidden"] = 24
    weights = run.make_model(cfg).state_dict()
    ckpt.save_checkpoint(run_dir, 99, {"model": weights, "ema": weights}, ckpt.load_state(latest), keep=10)


def _another_config(run_dir: Path, latest: Path) -> None:
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["model"]["kwargs"]["layers"] = 3
    (run_dir / "config.json").write_text(json.dumps(cfg))


DAMAGES = {
    "truncated": (lambda r, c: _each(c, "*.safetensors", lambda b: b[: len(b) // 2]), "failed its SHA-256"),
    "one bit flipped": (lambda r, c: _each(c, "*.safetensors", _flip), "failed its SHA-256 check"),
    "truncated, no SHA256SUMS": (
        lambda r, c: ((c / ckpt.SUMS).unlink(), _each(c, "*.safetensors", lambda b: b[:-7])),
        "has no SHA256SUMS",
    ),
    "damaged EMA, no SHA256SUMS": (
        lambda r, c: ((c / ckpt.SUMS).unlink(), _each(c, "ema.safetensors", _flip)),
        "has no SHA256SUMS",
    ),
    "a file not in SHA256SUMS": (
        lambda r, c: (c / ckpt.SUMS).write_text(
            "".join(line + "\n" for line in (c / ckpt.SUMS).read_text().splitlines() if "ema" not in line)
        ),
        "ema.safetensors: not listed in SHA256SUMS",
    ),
    "garbled SHA256SUMS": (
        lambda r, c: (c / ckpt.SUMS).write_bytes(b"\xff\x00garbage"),
        "SHA256SUMS: unreadable",
    ),
    "garbled state.json": (
        lambda r, c: ((c / "state.json").write_text('{"step": '), _resum(c)),
        "state.json: unreadable",
    ),
    "another model's checkpoint": (_another_models_checkpoint, "belong to another model or config"),
    "another config": (_another_config, "belong to another model or config"),
    "a pickle": (
        lambda r, c: (_each(c, "*.safetensors", lambda b: pickle_bomb(r.parent / "marker")), _resum(c)),
        "not a readable safetensors file",
    ),
    "a torch.save file": (
        lambda r, c: (_each(c, "*.safetensors", lambda b: torch_bomb(r.parent / "marker")), _resum(c)),
        "not a readable safetensors file",
    ),
}


@pytest.mark.parametrize("command", ["info", "sample", "train"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_or_foreign_checkpoint_is_refused(tiny_spiral_run, tmp_path, capsys, damage, command):
    """Every command that reads the latest checkpoint refuses it in one line, changes nothing on disk and
    never unpickles anything (the bombs' marker file never appears)."""
    out = tmp_path / "run"
    shutil.copytree(tiny_spiral_run, out)  # the session's tiny run: 15 steps, so train_argv(out, 20) resumes
    change, expected = DAMAGES[damage]
    change(out, ckpt.latest_checkpoint(out))
    before = snapshot(out)
    argv = {
        "info": ["info", out, "--json"],
        "sample": ["sample", out, "--out", tmp_path / "x.png"],
        "train": ["train", out / "config.json", "--out", out, "--max-steps", 20],  # the run's own config
    }[command]
    line = refused(capsys, argv)
    assert expected in line and str(out) in line, line
    assert snapshot(out) == before
    assert not (tmp_path / "marker").exists() and not (tmp_path / "x.png").exists()


def test_a_pickle_given_as_the_config_is_refused(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(torch_bomb(tmp_path / "marker"))
    (tmp_path / "config.pkl").write_bytes(pickle_bomb(tmp_path / "marker"))
    for name in ("model.pt", "config.pkl"):
        line = refused(capsys, ["train", tmp_path / name, "--out", tmp_path / "run"])
        assert f"{tmp_path / name}: not a valid config file" in line
    assert not (tmp_path / "marker").exists() and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- hostile image folders


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` × ``height`` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1-bit gray
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")))


def _broken(path: Path) -> None:
    Image.effect_noise((64, 64), 50).save(path)
    path.write_bytes(path.read_bytes()[:300])


FOLDERS = {
    "a broken image": (_broken, "not a readable image"),
    "an empty file": (lambda p: p.write_bytes(b""), "not a readable image"),
    "a huge image": (lambda p: _png_header_only(p, 12_000, 12_000), "over the 100-megapixel limit"),
    "a decompression bomb": (lambda p: _png_header_only(p, 50_000, 50_000), "possible decompression bomb"),
    "text named .png": (lambda p: p.write_text("hello, I am not a picture\n"), "not a readable image"),
    "no image at all": (lambda p: p.with_suffix(".txt").write_text("notes"), "no images with extensions"),
}


@pytest.mark.parametrize("case", list(FOLDERS))
def test_a_hostile_image_folder_is_refused(tmp_path, capsys, case):
    images = tmp_path / "images"
    images.mkdir()
    if case != "no image at all":
        Image.new("L", (20, 20), 128).save(images / "good.png")
    make, expected = FOLDERS[case]
    make(images / "bad.png")
    out = tmp_path / "run"
    settings = ("data.name=folder", f"data.root={images}", "data.image_size=16")
    line = refused(capsys, train_argv(out, 2, *settings, preset="mnist-tiny"), alone=False)
    assert expected in line, line
    assert [p.name for p in out.iterdir()] == [training.LOCK]  # no config, checkpoint or log written


def test_a_checkpoint_without_sha256sums_is_accepted_only_when_its_sums_are_written_again(
    tiny_spiral_copy, capsys
):
    """Deleting SHA256SUMS turns no check off: the run is refused until the user writes the sums again with
    the command the refusal gives, and then it loads as before."""
    out = tiny_spiral_copy
    latest = ckpt.latest_checkpoint(out)
    sums = (latest / ckpt.SUMS).read_bytes()
    (latest / ckpt.SUMS).unlink()
    line = refused(capsys, ["info", out, "--json"])
    command = line[line.index("(cd ") + 1 : line.rindex(")")]
    subprocess.run(command, shell=True, check=True)
    assert sorted(sums.splitlines()) == sorted((latest / ckpt.SUMS).read_bytes().splitlines())
    assert main(["info", str(out), "--json"]) == 0
