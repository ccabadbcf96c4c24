"""benchmarks/sampler_table.py on synthetic reports, and ``ddpm.samplers.AUTO`` against the sweep recorded in
``benchmarks/results.json``: the defaults must be the pairs that measured best."""

import json

import pytest
from PIL import Image

from ddpm.samplers import AUTO, auto_sampling
from tests.notebook_runner import ROOT


@pytest.fixture
def table(benchmark_script):
    return benchmark_script("sampler_table")


def _report(path, sampler, spacing, steps, fld, n=100, **extra):
    report = {"sampler": sampler, "spacing": spacing, "steps": steps, "nfe": steps, "n": n, "seed": 0}
    report.update(fld=fld, fld_train_test=1.0, guidance=None, ema_sigma_rel=None, options=None, eta=None)
    path.write_text(json.dumps(dict(report, **extra)))


def test_best_pairs_lines_and_the_full_t_point(table, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"diffusion": {"T": 1000}}))
    points = [
        ("ddpm", "uniform", 10, 30.0),
        ("ddpm", "trailing", 10, 20.0),
        ("ddpm", "trailing", 20, 12.0),
        ("ddim", "uniform", 10, 25.0),
        ("ddim", "trailing", 10, 40.0),
        ("ddim", "uniform", 20, 11.0),
        ("ddpm", "uniform", 1000, 10.0),
    ]
    for i, (sampler, spacing, steps, fld) in enumerate(points):
        _report(run / "eval" / f"p{i}.json", sampler, spacing, steps, fld)
    _report(run / "eval" / "other_n.json", "ddim", "uniform", 10, 1.0, n=50)  # another N: left out
    _report(run / "eval" / "guided.json", "ddim", "uniform", 20, 1.0, guidance=2.0)  # guided: left out
    rows = table.read_rows(run, 100)
    assert len(rows) == 7 and rows[-1]["spacing"] == table.FULL
    best = table.best_pairs(rows)
    assert {k: (r["sampler"], r["spacing"], r["fld"]) for k, r in best.items()} == {
        10: ("ddpm", "trailing", 20.0),
        20: ("ddim", "uniform", 11.0),
    }
    lines = {(r["sampler"], r["spacing"], r["nfe"]) for r in table.best_spacing_rows(rows)}
    # the spacing each sampler does best with at 10 evaluations (measured most often), and the full-T point
    assert lines == {("ddpm", "trailing", 10), ("ddpm", "trailing", 20), ("ddim", "uniform", 10)} | {
        ("ddim", "uniform", 20),
        ("ddpm", table.FULL, 1000),
    }
    figure = tmp_path / "sweep.png"
    assert table.main([str(run), "--n", "100", "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "best at --steps 20: ddim, uniform: FLD 11.00, 1.100× the full-T DDPM point" in out
    assert "| ddpm | trailing | 20.00 | 12.00 |  |" in out
    assert Image.open(figure).size[0] > 100


def test_auto_gives_the_pair_that_measured_best_at_each_count():
    """AUTO (ddpm.samplers) against the headline model's sweep on record: at each count the sweep measured,
    the default is its best pair; change either, and this says whether they still agree."""
    record = json.loads((ROOT / "benchmarks" / "results.json").read_text())["sampler_sweep_uncond"]
    assert record["best"], "no sweep on record"
    for nfe, (sampler, spacing, _fld) in record["best"].items():
        assert auto_sampling(int(nfe)) == (sampler, spacing), (nfe, AUTO)
