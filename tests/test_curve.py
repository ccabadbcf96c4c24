"""benchmarks/curve.py on synthetic ``quality`` entries: each recipe fitted on its own, all on one figure,
and ``learning_curve`` kept as it was (the first recipe's fit)."""

import json

import pytest
from PIL import Image


@pytest.fixture
def curve(benchmark_script):
    return benchmark_script("curve")


def _entry(images: int, fld: float, overrides=()) -> dict:
    """A quality.py entry holding what curve.py reads; its FLD lies on the law the test chooses."""
    return {
        "preset": "mnist-unet",
        "overrides": ["train.num_threads=1", *overrides],
        "sampler": "dpmpp2m-sde",
        "sampler_steps": 20,
        "guidance": None,
        "at_n": {"n": 10_000, "fld": fld, "fld_train_test": 0.5},
        "images_seen": images,
        "steps_trained": images // 64,
        "train_seconds": images / 30,
        "threads": 1,
    }


def _law(a: float, b: float, images: int) -> float:
    return 0.5 + a * images ** (-b)


@pytest.fixture
def results(tmp_path):
    horizons = (57_600, 115_200, 230_400)
    quality = {f"old{i}": _entry(n, _law(4e5, 0.9, n)) for i, n in enumerate(horizons)}
    quality |= {f"new{i}": _entry(n, _law(1e5, 0.8, n), ["train.lr=0.002"]) for i, n in enumerate(horizons)}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"quality": quality, "learning_curve": {"a": 1.0, "stale": True}}))
    return path


def test_several_recipes_are_fitted_apart_and_drawn_together(curve, results, tmp_path):
    figure = tmp_path / "curve.png"
    argv = ["--recipe", "old=old0,old1,old2", "--recipe", "new=new0,new1,new2"]
    assert curve.main([*argv, "--results", str(results), "--figure", str(figure)]) == 0
    written = json.loads(results.read_text())
    fits = written["learning_curves"]
    assert list(fits) == ["new", "old"]  # sorted by the writer; each its own law
    assert fits["old"]["b"] == pytest.approx(0.9, abs=1e-3) and fits["new"]["b"] == pytest.approx(
        0.8, abs=1e-3
    )
    assert fits["old"]["a"] == pytest.approx(4e5, rel=1e-3)
    assert written["learning_curve"]["b"] == fits["old"]["b"]  # the first recipe, where it always was
    needed = (4e5 / (2 * 0.5)) ** (1 / 0.9)
    assert fits["old"]["images_at_target"] == pytest.approx(needed, rel=1e-3)
    with Image.open(figure) as image:
        assert image.format == "PNG"


def test_held_out_runs_are_measured_against_the_law_not_fitted(curve, results, tmp_path):
    quality = json.loads(results.read_text())["quality"]
    n = 900_000  # beyond the fitted horizons, another precision, and 10 % above the law
    overrides = ["train.precision=bf16", "train.fit_horizon=true", "seed=1"]
    quality["held"] = _entry(n, 1.1 * _law(4e5, 0.9, n), overrides)
    results.write_text(json.dumps({"quality": quality}))
    argv = ["--recipe", "old=old0,old1,old2", "--held-out", "old=held", "--results", str(results)]
    assert curve.main([*argv, "--figure", str(tmp_path / "c.png")]) == 0
    fit = json.loads(results.read_text())["learning_curves"]["old"]
    assert fit["b"] == pytest.approx(0.9, abs=1e-3)  # the held-out run is not in the fit
    (held,) = fit["held_out"]
    assert held["key"] == "held" and held["law_fld"] == pytest.approx(_law(4e5, 0.9, n), rel=1e-3)
    assert held["fld_over_law"] == pytest.approx(1.1, abs=2e-3)


def test_an_entry_with_its_config_is_read_by_it_not_by_todays_preset(curve, results, tmp_path):
    from ddpm.config import apply_overrides
    from ddpm.presets import get_preset

    quality = json.loads(results.read_text())["quality"]
    for key in ("old0", "old1", "old2"):  # as quality.py writes them now: the config the run was trained with
        config = apply_overrides(get_preset("mnist-unet"), quality[key]["overrides"]).to_dict()
        quality[key]["config"] = config
    results.write_text(json.dumps({"quality": quality}))
    argv = ["--recipe", "old=old0,old1,old2", "--results", str(results), "--figure", str(tmp_path / "c.png")]
    assert curve.main(argv) == 0
    quality["old2"]["config"]["model"]["kwargs"]["model_channels"] = 48  # its overrides do not say so
    results.write_text(json.dumps({"quality": quality}))
    with pytest.raises(SystemExit, match="old2: its config differs from old0's in more than the horizon"):
        curve.main(argv)


def test_the_single_recipe_command_still_works(curve, results, tmp_path):
    argv = ["--keys", "old0", "old1", "old2", "--results", str(results), "--figure", str(tmp_path / "c.png")]
    assert curve.main(argv) == 0
    written = json.loads(results.read_text())
    assert written["learning_curve"]["b"] == pytest.approx(0.9, abs=1e-3)
    assert list(written["learning_curves"]) == ["old2"]  # named after its last key


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "mixed=old0,new1,old2"], "differs from old0's in more than the horizon"),
        (["--recipe", "old=old0,old1", "--recipe", "old=new0,new1"], "given twice"),
        (["--recipe", "old"], "write NAME=KEY1,KEY2"),
        (["--recipe", "one=old0"], "at least two runs"),
        (["--recipe", "x=old0,nope"], "no quality.nope"),
        ([], "give --keys"),
        (["--recipe", "old=old0,old1", "--held-out", "new=new2"], "no recipe named 'new'"),
        (["--recipe", "old=old0,old1", "--held-out", "old=new2"], "the precision and the seed"),
    ],
)
def test_refusals(curve, results, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        curve.main([*argv, "--results", str(results), "--figure", str(tmp_path / "c.png")])
