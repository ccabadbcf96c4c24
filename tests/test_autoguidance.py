"""Autoguidance as a run's own setting: training keeps the guide's checkpoint, ``ddpm eval`` and ``ddpm
sample`` use it by default, ``--guidance 0`` turns it off, ``ddpm export`` carries it, and a run without
it says so in one line."""

import hashlib
import json
import shutil

import pytest
import torch

from ddpm.cli import main
from ddpm.config import Config, ConfigError, validate
from ddpm.engine import checkpoint as ckpt
from ddpm.presets import get_preset
from tests.conftest import DATA

TINY = [
    f"data.root={DATA}",
    "diffusion.T=50",
    "sample.steps=3",
    "train.sample_n=4",
    "train.checkpoint_every=100",  # no periodic checkpoint: only the guide's and the last
    "train.keep_checkpoints=1",
    "sample.guide_at=0.5",  # step 2 of 4
    "sample.autoguidance=1.5",
]


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory, mnist_lenet):
    out = tmp_path_factory.mktemp("autoguidance") / "run"
    argv = ["train", "mnist-tiny", "--out", str(out), "--max-steps", "4"]
    assert main(argv + [a for s in TINY for a in ("--set", s)]) == 0
    return out


def _report(capsys, *argv) -> dict:
    assert main(["eval", *map(str, argv), "--n", "20", "--steps", "2", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_training_keeps_the_guides_checkpoint_beside_the_last(guided_run):
    kept = sorted(p.name for p in (guided_run / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000004"]  # keep_checkpoints=1 prunes all others


def test_eval_is_autoguided_by_default_and_guidance_0_turns_it_off(guided_run, capsys):
    guided = _report(capsys, guided_run, "--name", "guided")
    assert (guided["guidance"], guided["guide_step"], guided["checkpoint_step"]) == (1.5, 2, 4)
    assert guided["guide"] == "checkpoints/step-00000002"  # the run's own: named within it
    assert guided["network_evaluations"] == 4  # two steps, each with the guide's pass
    plain = _report(capsys, guided_run, "--guidance", "0", "--name", "plain")
    assert plain["guide_step"] is None and plain["network_evaluations"] == 2
    assert plain["fld"] != guided["fld"]
    other = _report(capsys, guided_run, "--guidance", "3", "--name", "w3")
    assert (other["guidance"], other["guide_step"]) == (3.0, 2)


def test_sample_uses_the_runs_guide_and_an_export_carries_it(guided_run, tmp_path, monkeypatch, capsys):
    def npy(run, *extra):
        out = tmp_path / f"{run.name}{len(extra)}.npy"
        assert main(["sample", str(run), "--n", "8", "--steps", "3", "--out", str(out), *extra]) == 0
        return hashlib.sha256(out.read_bytes()).hexdigest()

    exported = tmp_path / "export"
    assert main(["export", str(guided_run), "--out", str(exported)]) == 0
    assert "the EMA weights at step 4 (checkpoints/step-00000004/ema.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in (exported / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    monkeypatch.setenv("DDPM_DATA", DATA)
    guide = exported / "checkpoints" / "step-00000002" / "ema.safetensors"
    assert {t.dtype for t in ckpt.load_tensors(guide).values()} == {torch.float16}  # half the size
    assert npy(guided_run, "--guidance", "0") == npy(exported, "--guidance", "0")
    assert npy(exported) != npy(exported, "--guidance", "0")  # the export is guided by default


def test_a_sweep_records_the_guidance_its_points_were_sampled_with(guided_run, capsys):
    argv = ["sweep", str(guided_run), "--samplers", "ddpm", "--steps", "2", "--n", "20", "--full-n", "20"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["guidance"], result["guide"], result["guidance_interval"]) == (
        1.5,
        "checkpoints/step-00000002",
        None,
    )


def test_a_run_whose_guide_is_gone_says_so_in_one_line(guided_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(guided_run, run)
    shutil.rmtree(run / "checkpoints" / "step-00000002")
    assert main(["eval", str(run), "--n", "20", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "its guide, the checkpoint of step 2 (sample.guide_at 0.5 of 4 steps), is missing" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["eval", str(run), "--n", "20", "--steps", "2", "--guidance", "0", "--name", "x"]) == 0


@pytest.mark.parametrize(
    "sets, message",
    [
        ({"autoguidance": 1.0, "guide_at": None}, "sample.autoguidance needs sample.guide_at"),
        ({"autoguidance": 1.0, "guide_at": 1.0}, "sample.guide_at must"),
        ({"autoguidance": -1.0, "guide_at": 0.1}, "sample.autoguidance must"),
    ],
)
def test_autoguidance_settings_are_checked(sets, message):
    cfg = get_preset("mnist-unet")
    for key, value in sets.items():
        setattr(cfg.sample, key, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.parametrize("preset", ["mnist-unet", "fashion-unet"])
def test_the_autoguided_presets_guide_only_inside_their_interval(preset):
    """Autoguided everywhere, 10 steps sampled worse than unguided ones (benchmarks/README.md): the presets
    guide for σ_t in (0.28, 5.42] alone, and a config from before, without the key, guides everywhere."""
    cfg = validate(get_preset(preset))
    assert (cfg.sample.autoguidance, cfg.sample.guide_at) == (1.0, 0.2)
    assert cfg.sample.guidance_interval == (0.28, 5.42)
    before = cfg.to_dict()
    del before["sample"]["guidance_interval"]  # a run saved before the key existed
    assert Config.from_dict(before).sample.guidance_interval is None
