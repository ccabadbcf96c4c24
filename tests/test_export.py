"""``ddpm export``: the final EMA alone, in a folder that samples, evaluates and describes itself like the run
it came from, refuses to be trained on, and is refused as it should be."""

import hashlib
import json
import shutil

import pytest
import torch

from ddpm.cli import main
from ddpm.engine import checkpoint as ckpt
from ddpm.run import load_run
from tests.conftest import DATA


@pytest.fixture(scope="module")
def exported(tiny_spiral_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert main(["export", str(tiny_spiral_run), "--out", str(out)]) == 0
    return out


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _npy(run, tmp_path, *args) -> str:
    out = tmp_path / f"{run.name}.npy"
    argv = ["sample", str(run), "--n", "50", "--steps", "5", "--seed", "2", "--out", str(out), *args]
    assert main(argv) == 0
    return _sha256(out)


def test_the_folder_holds_the_ema_alone_and_checks_itself(exported, tiny_spiral_run):
    files = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    # The shared run holds the eval reports of whichever tests ran before: each is exported as it is.
    reports = sorted(p.relative_to(tiny_spiral_run).as_posix() for p in (tiny_spiral_run / "eval").glob("*"))
    assert [f for f in files if f.startswith("eval/")] == reports
    step = ckpt.latest_checkpoint(tiny_spiral_run).name
    assert [f for f in files if not f.startswith("eval/")] == [
        "SHA256SUMS",
        f"checkpoints/{step}/SHA256SUMS",
        f"checkpoints/{step}/ema.safetensors",
        f"checkpoints/{step}/state.json",
        "config.json",
        "export.json",
        "metrics.json",
    ]
    assert len(ckpt.check_sums(exported)) == len(files) - 1
    source = ckpt.latest_checkpoint(tiny_spiral_run)
    assert _sha256(exported / "checkpoints" / step / "ema.safetensors") == _sha256(source / "ema.safetensors")
    state = ckpt.load_state(exported / "checkpoints" / step)
    assert "optimizer" not in state and state["step"] == ckpt.load_state(source)["step"]
    provenance = json.loads((exported / "export.json").read_text())
    assert provenance["exported_from"] == str(tiny_spiral_run) and provenance["step"] == state["step"]
    assert provenance["images_seen"] == state["images_seen"] > 0


def test_sample_and_info_match_the_run(exported, tiny_spiral_run, tmp_path, capsys):
    assert _npy(exported, tmp_path) == _npy(tiny_spiral_run, tmp_path)
    for run in (tiny_spiral_run, exported):
        assert main(["info", str(run), "--json"]) == 0
    original, export = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:])
    assert export["ema_tensors_sha256"] == original["ema_tensors_sha256"]
    assert export["weights_tensors_sha256"] is None and export["export"]["step"] == original["step"]
    assert export["config"] == original["config"] and export["metrics"] == original["metrics"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "{run}/config.json", "--out", "{run}"], "is an exported run (ddpm export)"),
        (["train", "{run}/config.json", "--out", "{run}", "--restart"], "is an exported run (ddpm export)"),
        (["sample", "{run}", "--weights", "model", "--out", "{tmp}/x.npy"], "keeps only the EMA weights"),
        (["export", "{run}", "--out", "{tmp}/again"], "is an export already"),
    ],
)
def test_what_an_export_refuses(exported, tmp_path, capsys, argv, message):
    before = {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()}
    argv = [a.format(run=exported, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ddpm: error:") and message in err
    assert {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.iterdir())


def test_export_refusals_write_nothing(tiny_spiral_copy, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    no_ema = tmp_path / "no-ema"
    shutil.copytree(tiny_spiral_copy, no_ema)
    (ckpt.latest_checkpoint(no_ema) / "ema.safetensors").unlink()
    (tmp_path / "not-a-run").mkdir()
    cases = [
        (tmp_path / "missing", "not a run folder"),
        (tmp_path / "not-a-run", "not a run folder"),
        (no_ema, "has no EMA weights"),
    ]
    before = sorted(tmp_path.rglob("*"))
    for source, message in cases:
        assert main(["export", str(source), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert main(["export", str(tiny_spiral_copy), "--out", str(taken)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before  # no --out, no temporary folder


def test_an_empty_out_folder_is_taken_and_the_summary_says_what_next(tiny_spiral_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tiny_spiral_run), "--out", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "ema.safetensors" in out and " kB" in out and f"ddpm sample {tmp_path / 'empty'} --n 64" in out
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_fp16_halves_the_weights_and_loads_them_as_fp32(tiny_spiral_run, tmp_path, capsys):
    """``--fp16``: the final EMA stored in fp16, export.json says so, and the model loads them rounded."""
    out = tmp_path / "half"
    assert main(["export", str(tiny_spiral_run), "--out", str(out), "--fp16"]) == 0
    step = ckpt.latest_checkpoint(tiny_spiral_run).name
    stored = ckpt.load_tensors(out / "checkpoints" / step / "ema.safetensors")
    source = ckpt.load_tensors(ckpt.latest_checkpoint(tiny_spiral_run) / "ema.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    assert "rounded to fp16" in json.loads((out / "export.json").read_text())["weights"]
    model = load_run(out, device="cpu").model
    for name, p in model.state_dict().items():
        assert p.dtype == torch.float32 and torch.equal(p, source[name].half().float())
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["ema_tensors_sha256"] == ckpt.tensors_sha256(stored)


@pytest.fixture(scope="module")
def mnist_cond(tmp_path_factory, mnist_lenet):
    """A 2-step class-conditional MNIST run with an eval report, and its export."""
    root = tmp_path_factory.mktemp("export-mnist")
    run, out = root / "run", root / "export"
    sets = ["model.kwargs.model_channels=8", "model.kwargs.attention_resolutions=[7]", "train.batch_size=8"]
    sets += ["train.sample_n=4", "sample.steps=3", "train.warmup_steps=1", f"data.root={DATA}"]
    argv = ["train", "mnist-cond", "--out", str(run), "--max-steps", "2"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert main(["eval", str(run), "--n", "20", "--steps", "2", "--name", "a"]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    return run, out


def test_eval_of_an_export_matches_the_run_and_its_reports_travel(mnist_cond, monkeypatch, capsys):
    run, out = mnist_cond
    assert (out / "eval" / "a.json").read_bytes() == (run / "eval" / "a.json").read_bytes()
    assert (out / "eval" / "a.png").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["root"] is None  # where the run found MNIST is no part of the export
    provenance = json.loads((out / "export.json").read_text())
    assert provenance["config_changes"] == {"data.root": {"was": DATA, "now": None}}
    monkeypatch.setenv("DDPM_DATA", DATA)
    for folder in (run, out):
        argv = ["eval", str(folder), "--n", "20", "--steps", "2", "--guidance", "1", "--name", "b", "--json"]
        assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    original, export = (json.loads(line) for line in lines if line.startswith("{"))
    keys = ("fld", "fld_train_test", "class_entropy", "class_histogram", "checkpoint_step")
    assert {k: export[k] for k in keys} == {k: original[k] for k in keys}


def test_label_all_draws_a_row_per_class(mnist_cond, tmp_path, capsys):
    from PIL import Image

    _, out = mnist_cond
    grid = tmp_path / "rows.png"
    assert main(["sample", str(out), "--n", "20", "--steps", "2", "--label", "all", "--out", str(grid)]) == 0
    width, height = Image.open(grid).size
    assert height > 4 * width  # 10 rows of 2
    assert main(["sample", str(out), "--n", "15", "--label", "all", "--out", str(grid)]) == 2
    assert "must be a multiple of the 10 classes" in capsys.readouterr().err
    loaded = load_run(out, device="cpu")
    assert loaded.cfg.model.num_classes == 10


def test_an_export_can_be_told_how_to_sample_and_samples_so(mnist_cond, tmp_path, monkeypatch, capsys):
    run, _ = mnist_cond
    out = tmp_path / "guided"
    sets = ["--set", "sample.guidance=0.5", "--set", "sample.guidance_interval=[0.3,5]"]
    assert main(["export", str(run), "--out", str(out), *sets]) == 0
    assert "it samples with sample.guidance=0.5, sample.guidance_interval=[0.3,5]" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["sample"]["guidance"], config["sample"]["guidance_interval"]) == (0.5, [0.3, 5])
    changes = json.loads((out / "export.json").read_text())["config_changes"]
    assert changes["sample.guidance"] == {"was": 0.0, "now": 0.5}
    assert changes["sample.guidance_interval"] == {"was": None, "now": [0.3, 5]}
    monkeypatch.setenv("DDPM_DATA", DATA)

    def npy(folder, *extra):
        path = tmp_path / f"{folder.name}{len(extra)}.npy"
        argv = ["sample", str(folder), "--n", "10", "--steps", "3", "--label", "3", "--out", str(path)]
        argv += ["--spacing", "trailing"]  # a step inside (0.3, 5], where 3 karras steps have none
        assert main([*argv, *extra]) == 0
        return _sha256(path)

    # The export's default is the run sampled with those flags, and --guidance 0 is the run unguided.
    assert npy(out) == npy(run, "--guidance", "0.5", "--guidance-interval", "0.3,5")
    assert "guided as the run's config says (w = 0.5 for σ in (0.3, 5]" in capsys.readouterr().out
    assert npy(out, "--guidance", "0") == npy(run)
    assert npy(out) != npy(out, "--guidance", "0")
    argv = ["eval", str(out), "--n", "20", "--steps", "2", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["guidance"], report["guidance_interval"]) == (0.5, [0.3, 5])
    assert report["path"].endswith("-g0.5-gi0.3-5-s0.json")


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lr=1"], "--set 'train.lr=1': an export changes sample.* settings alone"),
        (["sample.guidance=-1"], "sample.guidance must"),
        (["sample.nope=1"], "unknown key 'nope'"),
    ],
)
def test_export_settings_outside_sampling_are_refused(mnist_cond, tmp_path, capsys, sets, message):
    run, _ = mnist_cond
    out = tmp_path / "refused"
    assert main(["export", str(run), "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())
