"""The command line, end to end on a tiny run: train, resume, sample, info, and one-line refusals."""

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from ddpm.cli import main
from tests.conftest import TINY

SETS = [arg for item in TINY for arg in ("--set", item)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_spiral_run):
    """This module's copy of the session's tiny run (``train spiral --max-steps 15 --seed 3`` with TINY): the
    tests below extend it in place."""
    out = tmp_path_factory.mktemp("cli") / "run"
    shutil.copytree(tiny_spiral_run, out)
    return out


def test_train_writes_the_run_folder(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["step"] == 15
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["diffusion"]["T"] == 20 and cfg["preset"] == "spiral"
    assert (tiny_run / "samples").is_dir() and any((tiny_run / "samples").iterdir())


def test_rerun_resumes_and_extends(tiny_run, capsys):
    argv = ["train", "spiral", "--out", str(tiny_run), "--max-steps", "20", "--seed", "3", *SETS]
    assert main(argv) == 0  # the same command, with a larger budget
    assert json.loads((tiny_run / "metrics.json").read_text())["step"] == 20


def test_sample_from_the_folder_alone(tiny_run, tmp_path):
    png, gif = tmp_path / "points.png", tmp_path / "reverse.gif"
    assert main(["sample", str(tiny_run), "--n", "300", "--out", str(png), "--gif", str(gif)]) == 0
    assert Image.open(png).size[0] > 100
    with Image.open(gif) as im:
        assert im.n_frames > 5


def test_info_json(tiny_run, capsys):
    assert main(["info", str(tiny_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {
        "step",
        "parameters",
        "weights_tensors_sha256",
        "ema_tensors_sha256",
        "world_size",
        "config",
    } <= set(info)
    assert info["world_size"] == 1 and len(info["weights_tensors_sha256"]) == 64
    assert info["weights_tensors_sha256"] != info["ema_tensors_sha256"]


def test_info_reports_the_checkpoint_when_metrics_json_is_damaged(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["info", str(run), "--json"]) == 0
    good = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert good["metrics"] is not None
    (run / "metrics.json").write_text('{"step": 3')
    assert main(["info", str(run), "--json"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out.strip().splitlines()[-1])
    assert info["metrics"] is None and info["weights_tensors_sha256"] == good["weights_tensors_sha256"]
    assert captured.err.count("\n") == 1 and "metrics.json is not readable JSON" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "no-such-preset", "--out", "{tmp}/r"], "neither a preset"),
        (["train", "spiral", "--out", "{tmp}/r", "--set", "diffusion.T=0"], "T must be at least 1"),
        (["train", "spiral", "--out", "{tmp}/r", "--set", "schedule=zigzag"], "unknown schedule"),
        (
            ["train", "spiral", "--out", "{tmp}/r", "--set", "schedule=linear", "--set", "T=20"],
            "reaches β = 1 ≥ 1",
        ),
        (["train", "spiral", "--out", "{tmp}/r", "--max-steps", "-3"], "max_steps must be non-negative"),
        (["train", "spiral", "--out", "{tmp}/r", "--set", "train.nope=1"], "unknown key"),
        (["train", "spiral", "--out", "{tmp}/file.txt"], "is a file"),
        (["train", "spiral", "--out", "{tmp}/file.txt/run"], "cannot write there (Not a directory)"),
        (
            ["train", "spiral", "--out", "{tmp}/r", "--set", "model.kwargs.widht=3"],
            "unexpected keyword argument",
        ),
        (["train", "spiral", "--out", "{tmp}/r", "--fit-horizon"], "fit_horizon needs train.max_minutes"),
        (["sample", "{tmp}", "--out", "{tmp}/x.png"], "not a run folder"),
    ],
)
def test_refusals_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "file.txt").write_text("keep me")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "file.txt").read_text() == "keep me"
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A tiny class-conditional run: the MLP on shapes3 (3 classes)."""
    out = tmp_path_factory.mktemp("cli") / "cond"
    assert main(["train", "shapes3-cond", "--out", str(out), "--max-steps", "2", *SETS]) == 0
    return out


@pytest.mark.parametrize(
    "conditional, flags, message",
    [
        (False, ["--label", "3"], "--label 3: the run has an unconditional model"),
        (False, ["--guidance", "3"], "guidance needs a class-conditional model"),
        (True, ["--label", "3"], "--label 3: the run has labels 0…2"),
        (True, ["--label", "-1"], "--label -1: the run has labels 0…2"),
        (True, ["--guidance", "3"], "guidance needs labels to guide towards"),
        (False, ["--steps", "0"], "sample.steps (--steps) must lie in 1…T (20)"),
        (False, ["--out", "{tmp}/missing/x.png"], "missing is not a folder"),
        (False, ["--out", "{tmp}/file.txt/x.png"], "file.txt is not a folder"),
    ],
)
def test_sample_refusals(request, tmp_path, capsys, conditional, flags, message):
    """Labels and guidance the run cannot take, and --out where no file can go: one line, nothing written."""
    run_dir = request.getfixturevalue("conditional_run" if conditional else "tiny_run")
    (tmp_path / "file.txt").write_text("keep me")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "x.png"), "--n", "4", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "ddpm", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "sample" in out.stdout


def _image_folder(root, classes=("a", "b"), n=4, size=20):
    from PIL import Image

    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size + 3 * i, size), (60 * k + 10 * i, 100, 30)).save(root / name / f"{i}.png")


def test_train_and_sample_on_an_image_folder_with_labels(tmp_path):
    """A user's own images: RGB, resized; class subfolders drive a conditional model and --label."""
    _image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    sets = ["data.name=folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=16", "data.channels=3"]
    sets += [
        "model.kwargs.model_channels=8",
        "model.kwargs.num_classes=2",
        "model.kwargs.attention_resolutions=[4]",
    ]
    sets += ["train.batch_size=4", "sample_n=4", "sample.steps=3", "train.warmup_steps=1"]
    argv = ["train", "mnist-cond", "--out", str(out), "--max-steps", "2"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert main(["sample", str(out), "--n", "4", "--label", "1", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").mode == "RGB"


def test_class_count_mismatch_is_refused(tmp_path, capsys):
    _image_folder(tmp_path / "imgs", classes=("a", "b", "c"))
    sets = [
        "data.name=folder",
        f"data.root={tmp_path / 'imgs'}",
        "data.image_size=16",
        "model.kwargs.model_channels=8",
    ]
    argv = ["train", "mnist-cond", "--out", str(tmp_path / "run"), "--max-steps", "1"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 2
    assert "conditional on 10 classes but the data set has 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_config_file_instead_of_a_preset(tiny_run, tmp_path):
    out = tmp_path / "again"
    assert main(["train", str(tiny_run / "config.json"), "--out", str(out), "--max-steps", "4"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["diffusion"]["T"] == 20 and cfg["train"]["max_steps"] == 4
    assert "nll_bits_per_dim" in json.loads((out / "metrics.json").read_text())


def test_auto_sampling_follows_the_table_and_runs_that_name_their_sampler_keep_it(tiny_spiral_copy, tmp_path):
    """New runs save sample.sampler = sample.spacing = "auto": they sample as samplers.AUTO says for their
    number of steps. Runs from before saved "ddpm" and "uniform" and keep them, whatever the table says."""
    from ddpm.samplers import auto_sampling

    config = tiny_spiral_copy / "config.json"
    cfg = json.loads(config.read_text())
    assert (cfg["sample"]["sampler"], cfg["sample"]["spacing"]) == ("auto", "auto")
    T = cfg["diffusion"]["T"]
    assert T <= 100 and auto_sampling(T, T) == ("ddpm", "uniform") != auto_sampling(T)  # every step: DDPM

    def draw(saved, flags, name):
        cfg["sample"].update(sampler=saved[0], spacing=saved[1])
        config.write_text(json.dumps(cfg))
        out = tmp_path / f"{name}.npy"
        assert main(["sample", str(tiny_spiral_copy), "--n", "50", "--out", str(out), *flags]) == 0
        return out.read_bytes()

    for steps in (T, 6):
        chosen = auto_sampling(steps, T)
        flags = ["--steps", str(steps)]
        auto = draw(("auto", "auto"), flags, f"auto{steps}")
        assert auto == draw(
            ("ddpm", "uniform"), [*flags, "--sampler", chosen[0], "--spacing", chosen[1]], "c"
        )
        before = draw(("ddpm", "uniform"), flags, f"before{steps}")
        assert before == draw(("auto", "auto"), [*flags, "--sampler", "ddpm", "--spacing", "uniform"], "d")
