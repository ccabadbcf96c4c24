"""Unchecked input, refused: every config is checked wherever it comes from (a preset, a file, --set, a
resumed run's config.json, a run loaded for sample, eval or info), every value against its range, the
model's arguments against the model's own, the data against the model, a device against the machine and a
checkpoint's state.json against its types. Each refusal is one ``ddpm: error:`` line, exit status 2, no
traceback, and every file that was there is byte-identical afterwards."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from ddpm import config
from ddpm.cli import main
from ddpm.config import Config, ConfigError, apply_overrides
from ddpm.engine import checkpoint as ckpt
from ddpm.presets import PRESETS, get_preset
from ddpm.run import check_config, load_config
from tests.conftest import TINY
from tests.test_faults import _resum

SETS = [arg for item in TINY for arg in ("--set", item)]
CPU_ONLY = not torch.cuda.is_available()


def refused(capsys, argv) -> str:
    """Run the CLI; check that it exits with status 2 and nothing on stderr but one error line, and return
    that line without its ``ddpm: error:`` prefix."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ddpm: error: "), (code, err)
    assert "Traceback" not in err
    return lines[0][len("ddpm: error: ") :]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("config-faults") / "run"
    assert main(["train", "spiral", "--out", str(out), "--max-steps", "10", *SETS]) == 0
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A fresh copy of the tiny run, for a test to damage."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def train_argv(out, *settings, preset="spiral"):
    return [
        "train",
        preset,
        "--out",
        out,
        "--max-steps",
        "20",
        *SETS,
        *(a for s in settings for a in ("--set", s)),
    ]


# --------------------------------------------------------------------------- every source of a config


def test_every_preset_passes_check_config():
    for name in PRESETS:
        check_config(get_preset(name))


def test_every_value_has_a_rule():
    """Each value of a config is a name (its registry checks it), a path, a switch, sample.steps (1…T), the
    model's arguments (the model checks them) or has a rule in config.RULES."""
    others = {
        "data.name",
        "data.root",
        "model.name",
        "model.kwargs",
        "diffusion.schedule",
        "diffusion.prediction",
        "diffusion.variance",
        "diffusion.noise_levels",
        "diffusion.zero_terminal_snr",
        "train.ema_warmup",
        "train.channels_last",
        "train.fit_horizon",
        "sample.sampler",
        "sample.spacing",
        "sample.steps",
        "preset",
    }
    keys = {key for key, _, _ in config._leaves(Config())}
    assert keys - others == set(config.RULES)
    for key, _, hint in config._leaves(Config()):
        if hint is bool:
            assert key in others


@pytest.mark.parametrize("command", ["train", "info", "sample", "eval"])
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.batch_size", -4, "train.batch_size must be at least 1, got -4"),
        ("train.lr", float("nan"), "train.lr must be a finite number, got nan"),
        (
            "model.kwargs",
            {"hidden": -1, "layers": 2},
            "model.kwargs.hidden must lie in 1…4,096 for model 'mlp'",
        ),
        ("train.device", "nonsense", "train.device must be auto, cpu, cuda, cuda:N or mps, got 'nonsense'"),
    ],
)
def test_a_saved_config_is_checked_when_the_run_is_loaded(
    run_copy, tmp_path, capsys, command, key, value, message
):
    """A run's config.json edited by hand: resuming, info, sample and eval refuse it, naming the file."""
    saved = json.loads((run_copy / "config.json").read_text())
    section, name = key.split(".")
    saved[section][name] = value
    (run_copy / "config.json").write_text(json.dumps(saved))  # json writes NaN for float("nan")
    before = snapshot(run_copy)
    argv = {
        "train": train_argv(run_copy),
        "info": ["info", run_copy],
        "sample": ["sample", run_copy, "--out", tmp_path / "x.png"],
        "eval": ["eval", run_copy, "--n", "10"],
    }[command]
    line = refused(capsys, argv)
    assert line.startswith(f"{run_copy}/config.json: {message}"), line
    assert snapshot(run_copy) == before and not (tmp_path / "x.png").exists()


def test_load_config_names_the_file(run_copy):
    saved = json.loads((run_copy / "config.json").read_text())
    saved["train"]["batch_size"] = -4
    (run_copy / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError) as e:
        load_config(run_copy / "config.json")
    assert str(e.value) == f"{run_copy}/config.json: train.batch_size must be at least 1, got -4"


def test_a_config_file_given_to_train_is_checked(tiny_run, tmp_path, capsys):
    saved = json.loads((tiny_run / "config.json").read_text())
    saved["data"]["noise"] = float("nan")
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    line = refused(capsys, ["train", tmp_path / "bad.json", "--out", tmp_path / "new"])
    assert line.endswith("data.noise must be a finite number, got nan"), line
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- --set, one line each

# (--set items, the error line); each is refused before anything is written
CASES = {
    # devices: how they are written, and whether the machine has them
    "device nonsense": (
        ["device=nonsense"],
        "train.device must be auto, cpu, cuda, cuda:N or mps, got 'nonsense'",
    ),
    "device CUDA": (["device=cuda"], "device 'cuda' is not available: "),
    "device cuda:99": (["device=cuda:99"], "device 'cuda:99' is not available: "),
    # ranges
    "num_threads": (["train.num_threads=-1"], "train.num_threads must be at least 1 or null, got -1"),
    "betas": (["train.betas=[0.9]"], "train.betas must be two numbers in [0, 1), got (0.9,)"),
    "betas of strings": (
        ['train.betas=["a", 0.9]'],
        "train.betas must be two numbers in [0, 1), got ('a', 0.9)",
    ),
    "grad_clip": (["train.grad_clip=-1"], "train.grad_clip must be positive or null, got -1.0"),
    "min_lr_ratio": (["train.min_lr_ratio=-5"], "train.min_lr_ratio must lie in [0, 1], got -5.0"),
    "noise NaN": (["data.noise=NaN"], "data.noise must be a finite number, got nan"),
    "lr infinite": (["train.lr=Infinity"], "train.lr must be a finite number, got inf"),
    "lr negative": (["train.lr=-1e-3"], "train.lr must be positive, got -0.001"),
    "weight_decay": (["train.weight_decay=-0.1"], "train.weight_decay must be non-negative, got -0.1"),
    "ema_decay": (["train.ema_decay=1"], "train.ema_decay must lie in [0, 1), got 1.0"),
    "warmup": (["train.warmup_steps=-1"], "train.warmup_steps must be non-negative, got -1"),
    "sample_n": (["train.sample_n=0"], "train.sample_n must be at least 1, got 0"),
    "sample_n huge": (["train.sample_n=1000000"], "train.sample_n must be at most 100,000, got 1000000"),
    "checkpoint_minutes": (
        ["train.checkpoint_minutes=0"],
        "train.checkpoint_minutes must be positive, got 0.0",
    ),
    "batch_size huge": (
        ["train.batch_size=100000000"],
        "train.batch_size must be at most 65,536, got 100000000",
    ),
    "grad_accum huge": (["train.grad_accum=1000000"], "train.grad_accum must be at most 1,024, got 1000000"),
    "T huge": (["diffusion.T=1000000000"], "diffusion.T must be at most 100,000, got 1000000000"),
    "n_samples huge": (
        ["data.n_samples=1000000000"],
        "data.n_samples must be at most 10,000,000, got 1000000000",
    ),
    "eval_n huge": (["sample.eval_n=1000000"], "sample.eval_n must be at most 20,000, got 1000000"),
    "p_uncond": (["diffusion.p_uncond=1"], "diffusion.p_uncond must lie in [0, 1), got 1.0"),
    "image_size": (["data.image_size=0"], "data.image_size must be at least 1, got 0"),
    "channels": (["data.channels=2"], "data.channels must be 1 (grey) or 3 (RGB), got 2"),
    "seed huge": (
        ["seed=100000000000000000000"],
        "seed must be at most 1,099,511,627,776, got 100000000000000000000",
    ),
    "warmup beyond 64 bits": (
        ["train.warmup_steps=100000000000000000000"],
        "train.warmup_steps must fit in 64 bits, got 100000000000000000000",
    ),
    # types
    "lr a string": (["train.lr=fast"], "train.lr must be a number, got 'fast'"),
    "batch a float": (["train.batch_size=1.5"], "train.batch_size must be an integer, got 1.5"),
    "a switch": (["train.ema_warmup=1"], "train.ema_warmup must be true or false, got 1"),
    "a value as a section": (
        ["model.kwargs.hidden.x=3"],
        "--set model.kwargs.hidden.x: model.kwargs.hidden is a value, not a section",
    ),
    "a name as a section": (["model.name.m=1"], "--set model.name.m: model.name is a value, not a section"),
    # the data and the model
    "points to an image model": (
        ["model.name=series_unet"],
        "model.name: 'series_unet' is a model for images, but data.name 'spiral' holds points; choose mlp",
    ),
    "images to a point model": (
        ["data.name=mnist"],
        "model.name: 'mlp' is a model for points, but data.name 'mnist' holds images; "
        "choose series_unet or unet",
    ),
    # the model's arguments
    "hidden negative": (
        ["model.kwargs.hidden=-1"],
        "model.kwargs.hidden must lie in 1…4,096 for model 'mlp', got -1",
    ),
    "hidden a string": (["model.kwargs.hidden=abc"], "model.kwargs.hidden must be an integer, got 'abc'"),
    "layers a float": (
        ["model.kwargs.layers=1e9"],
        "model.kwargs.layers must be an integer, got 1000000000.0",
    ),
    "layers huge": (
        ["model.kwargs.layers=1000000000"],
        "model.kwargs.layers must lie in 1…64 for model 'mlp', got 1000000000",
    ),
    "num_classes 0": (
        ["model.kwargs.num_classes=0"],
        "model.kwargs.num_classes must lie in 1…10,000 for model 'mlp', got 0",
    ),
    "residual a number": (["model.kwargs.residual=2"], "model.kwargs.residual must be true or false, got 2"),
    "a huge width": (
        ["model.kwargs.hidden=1000000"],
        "model.kwargs.hidden must lie in 1…4,096 for model 'mlp', got 1000000",
    ),
    "too many parameters": (
        ["model.kwargs.hidden=4096", "model.kwargs.layers=64"],
        "model.kwargs give model 'mlp' 2,148,687,874 parameters, more than the 200,000,000 allowed "
        "(training needs 20 bytes a parameter)",
    ),
    "the points' dimension": (
        ["model.kwargs.dim=3"],
        "model.kwargs.dim must be 2, the dimension of the points, got 3",
    ),
    "an unknown argument": (
        ["model.kwargs.widht=3"],
        "model.kwargs.widht is an unexpected keyword argument of model 'mlp'; it takes dim, hidden, layers, "
        "time_dim, residual, num_classes",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_set_refusals(run_copy, tmp_path, capsys, case):
    """A bad --set is refused before anything is written: a new --out is not even created, and an existing
    run folder given as --out is left byte-identical."""
    settings, message = CASES[case]
    if case == "device CUDA" and not CPU_ONLY:
        pytest.skip("this machine has CUDA")
    new = tmp_path / "new"
    line = refused(capsys, train_argv(new, *settings))
    assert line.startswith(message), line
    assert not new.exists()
    before = snapshot(run_copy)
    assert refused(capsys, train_argv(run_copy, *settings)) == line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "preset, settings, message",
    [
        ("mnist-tiny", ["data.channels=3"], "data.channels must be 1 for mnist (grey images), got 3"),
        ("mnist-tiny", ["data.image_size=32"], "data.image_size must be 28 for mnist, got 32"),
        (
            "mnist-tiny",
            ["model.kwargs.in_channels=3"],
            "model.kwargs.in_channels must be 1, the channels of the images (data.channels), got 3",
        ),
        (
            "mnist-unet",
            ["model.kwargs.out_channels=2"],
            "model.kwargs.out_channels must be 1, the channels of the images (data.channels), got 2",
        ),
        (
            "mnist-unet",
            ["model.kwargs.dropout=NaN"],
            "model.kwargs.dropout must lie in 0.0…1.0 for model 'unet'",
        ),
        (
            "mnist-unet",
            ['model.kwargs.channel_mult=[1, "a"]'],
            "model.kwargs.channel_mult must be a list of integers, got [1, 'a']",
        ),
        (
            "mnist-unet",
            ["model.kwargs.channel_mult=[1, 0]"],
            "model.kwargs.channel_mult must lie in 1…64 (each item) for model 'unet', got [1, 0]",
        ),
        ("mnist-unet", ["model.kwargs.num_heads=3"], "cannot build model 'unet': num_heads=3 must divide"),
        ("mnist-unet", ["model.kwargs.model_channels=1000"], "model.kwargs give model 'unet' "),
        ("mnist-unet", ["model.kwargs.num_classes=0"], "model.kwargs.num_classes must lie in 1…10,000"),
        ("mnist-tiny", ["model.kwargs.model_channels=0"], "model.kwargs.model_channels must lie in 1…1,024"),
        ("mnist-tiny", ["model.name=mlp"], "model.name: 'mlp' is a model for points, but data.name 'mnist'"),
    ],
)
def test_image_refusals(tmp_path, capsys, preset, settings, message):
    """Image runs: the set's image shape, the model's width and arguments; refused before any data is read."""
    argv = ["train", preset, "--out", tmp_path / "run", *(a for s in settings for a in ("--set", s))]
    line = refused(capsys, argv)
    assert line.startswith(message), line
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "nonsense"], "device must be auto, cpu, cuda, cuda:N or mps, got 'nonsense'"),
        (["--device", "cuda:99"], "device 'cuda:99' is not available: "),
        (["--device", "cuda"], "device 'cuda' is not available: "),
    ],
)
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_a_missing_device_is_one_line(run_copy, tmp_path, capsys, command, flags, message):
    if flags[1] == "cuda" and not CPU_ONLY:
        pytest.skip("this machine has CUDA")
    before = snapshot(run_copy)
    argv = ["sample", run_copy, "--out", tmp_path / "x.png"] if command == "sample" else ["eval", run_copy]
    assert refused(capsys, [*argv, *flags]).startswith(message)
    assert snapshot(run_copy) == before and not (tmp_path / "x.png").exists()


def test_a_resumed_run_on_a_machine_without_it(run_copy, capsys):
    """A run started with device cuda:99 (elsewhere) is resumed here: one line, the run as it was."""
    saved = json.loads((run_copy / "config.json").read_text())
    saved["train"]["device"] = "cuda:99"
    (run_copy / "config.json").write_text(json.dumps(saved))
    before = snapshot(run_copy)
    argv = ["train", run_copy / "config.json", "--out", run_copy, "--max-steps", 20]  # as it was
    assert refused(capsys, argv).startswith("device 'cuda:99' is not available: ")
    assert snapshot(run_copy) == before


# --------------------------------------------------------------------------- state.json of the wrong types

STATES = {
    "step a string": (lambda s: s.update(step="10"), 'step must be a non-negative integer, got "10"'),
    "step negative": (lambda s: s.update(step=-1), "step must be a non-negative integer, got -1"),
    "step a float": (lambda s: s.update(step=10.0), "step must be a non-negative integer, got 10.0"),
    "train_seconds a string": (
        lambda s: s.update(train_seconds="x"),
        'train_seconds must be a non-negative number, got "x"',
    ),
    "train_seconds NaN": (
        lambda s: s.update(train_seconds=float("nan")),
        "train_seconds must be a non-negative number, got NaN",
    ),
    "order": (
        lambda s: s["order"].update(epoch="a"),
        'order must be epoch and position, two non-negative integers, got {"epoch": "a", "position": 640}',
    ),
    "world_size": (lambda s: s.update(world_size=0), "world_size must be a positive integer, got 0"),
    "images_seen": (
        lambda s: s.update(images_seen=[1]),
        "images_seen must be a non-negative integer, got [1]",
    ),
    "optimizer lr": (
        lambda s: s["optimizer"]["param_groups"][0].update(lr="x"),
        "optimizer must be param_groups and scalars holding numbers, got ",
    ),
    "optimizer": (
        lambda s: s.update(optimizer=[]),
        "optimizer must be param_groups and scalars holding numbers, got []",
    ),
}


@pytest.mark.parametrize("command", ["info", "sample", "train"])
@pytest.mark.parametrize("case", list(STATES))
def test_a_state_of_the_wrong_types_is_refused(run_copy, tmp_path, capsys, case, command):
    """state.json with values of the wrong types and its SHA256SUMS rewritten to match (edited by hand):
    one CheckpointError line, nothing changed."""
    latest = ckpt.latest_checkpoint(run_copy)
    state = json.loads((latest / "state.json").read_text())
    change, message = STATES[case]
    change(state)
    (latest / "state.json").write_text(json.dumps(state))
    _resum(latest)
    before = snapshot(run_copy)
    argv = {
        "info": ["info", run_copy],
        "sample": ["sample", run_copy, "--out", tmp_path / "x.png"],
        "train": train_argv(run_copy),
    }[command]
    assert refused(capsys, argv).startswith(f"{latest}/state.json: {message}")
    assert snapshot(run_copy) == before


def test_a_good_state_loads(tiny_run):
    assert ckpt.load_state(ckpt.latest_checkpoint(tiny_run))["step"] == 10


# --------------------------------------------------------------------------- validate, directly


def test_a_config_built_in_python_is_checked_too():
    cfg = get_preset("spiral")
    cfg.train.batch_size = "64"
    with pytest.raises(ConfigError, match=r"^train.batch_size must be an integer, got '64'$"):
        check_config(cfg)
    cfg = get_preset("spiral")
    cfg.train.betas = (0.9, float("inf"))
    with pytest.raises(ConfigError, match=r"^train.betas must be a finite number, got inf$"):
        check_config(cfg)


def test_overrides_name_the_full_key():
    with pytest.raises(ConfigError, match=r"^train.lr must be a number, got 'inf'$"):
        apply_overrides(get_preset("spiral"), ["train.lr=inf"])
