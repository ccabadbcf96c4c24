"""``ddpm inpaint / edit / invert / interpolate / nll`` end to end on a tiny class-conditional MNIST run
(one training step: the numbers mean nothing, the plumbing is what is checked), and their one-line
refusals, with nothing written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import evaluate
from ddpm.cli import main
from ddpm.data.images import load
from tests.conftest import DATA
from tests.test_faults import refused

TINY_COND = [
    "model.kwargs.model_channels=8",
    "model.kwargs.attention_resolutions=[7]",
    "diffusion.T=50",
    "sample.steps=3",
    "train.sample_n=2",
    "train.batch_size=4",
    "train.warmup_steps=1",
    f"data.root={DATA}",
]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("edit") / "run"
    sets = [a for s in TINY_COND for a in ("--set", s)]
    assert main(["train", "mnist-cond", "--out", str(out), "--max-steps", "1", *sets]) == 0
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A test digit as a 28×28 PNG, a mask keeping its upper half, and pictures of the wrong size or kind."""
    folder = tmp_path_factory.mktemp("pictures")
    digit = load("mnist", "test", root=DATA)[0][0]
    Image.fromarray(digit).save(folder / "digit.png")
    mask = np.full((28, 28), 255, np.uint8)
    mask[14:] = 0
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(mask[:20, :20]).save(folder / "small.png")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "rgb.png")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(folder / "white.png")
    np.save(folder / "two.npy", np.zeros((2, 1, 28, 28), np.float32))
    (folder / "broken.png").write_bytes(b"not a png")
    return folder, torch.from_numpy(digit).float() / 127.5 - 1


def test_inpaint_keeps_the_known_half_and_takes_label_and_guidance(cond_run, pictures, tmp_path):
    folder, digit = pictures
    out = tmp_path / "c.npy"
    argv = ["inpaint", cond_run, "--image", folder / "digit.png", "--mask", folder / "mask.png", "--out", out]
    small = ["--n", "2", "--resample", "2", "--jump-length", "2", "--label", "7", "--guidance", "2"]
    assert main([str(a) for a in [*argv, *small]]) == 0
    x = torch.from_numpy(np.load(out))
    assert x.shape == (2, 1, 28, 28)
    assert torch.equal(x[:, 0, :14], digit[:14].expand(2, 14, 28))  # white rows: the input, exactly
    assert not torch.equal(x[:, 0, 14:], digit[14:].expand(2, 14, 28))
    png = tmp_path / "c.png"
    assert main([str(a) for a in [*argv[:-1], png, "--n", "3", "--resample", "1"]]) == 0
    assert Image.open(png).size[0] > 28


def test_edit_at_strength_0_returns_the_image_and_any_sampler_runs(cond_run, pictures, tmp_path):
    folder, digit = pictures
    out = tmp_path / "e.npy"
    argv = ["edit", cond_run, "--image", folder / "digit.png", "--out", out, "--n", "2"]
    assert main([str(a) for a in [*argv, "--strength", "0"]]) == 0
    assert torch.equal(torch.from_numpy(np.load(out)), digit.expand(2, 1, 28, 28))
    flags = ["--strength", "0.6", "--sampler", "ddim", "--eta", "0.5", "--label", "1"]
    assert main([str(a) for a in [*argv, *flags]]) == 0
    assert not torch.equal(torch.from_numpy(np.load(out)), digit.expand(2, 1, 28, 28))


def test_invert_reconstructs_and_interpolate_draws_frames(cond_run, pictures, tmp_path, capsys):
    folder, _ = pictures
    z, r = tmp_path / "z.npy", tmp_path / "r.npy"
    argv = ["invert", cond_run, "--image", folder / "digit.png", "--out", z, "--reconstruct", r]
    assert main([str(a) for a in [*argv, "--refine", "2"]]) == 0
    assert "largest reconstruction error" in capsys.readouterr().out
    assert np.load(z).shape == np.load(r).shape == (1, 1, 28, 28)
    frames = tmp_path / "i.npy"
    assert (
        main([str(a) for a in ["interpolate", cond_run, "--seeds", 1, 2, "--frames", 5, "--out", frames]])
        == 0
    )
    assert np.load(frames).shape == (5, 1, 28, 28)
    argv = ["interpolate", cond_run, "--images", folder / "digit.png", r, "--frames", 3, "--out", frames]
    assert main([str(a) for a in argv]) == 0
    assert np.load(frames).shape == (3, 1, 28, 28)


def test_nll_reports_both_measures_with_standard_errors(cond_run, capsys, monkeypatch):
    seen = []
    real = evaluate.progress_bar
    monkeypatch.setattr(evaluate, "progress_bar", lambda **kw: seen.append(kw["desc"]) or real(**kw))
    assert main(["nll", str(cond_run), "--n", "2", "--rtol", "1e-3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("nll_bits_per_dim", "nll_bits_per_dim_se", "vlb_bits_per_dim", "vlb_bits_per_dim_se"):
        assert np.isfinite(report[key]) and report[key] > 0, key
    assert len(report["ode_nfe"]) == 1 and report["data"] == "mnist test images"
    assert json.loads((cond_run / "eval" / "nll-n2-s0.json").read_text())["n"] == 2
    assert seen == ["ODE likelihood", "variational bound"]


def test_the_ode_likelihood_beats_the_bound_on_a_trained_2d_run(tiny_spiral_run, capsys):
    """Both bound −log p of the same model family; on 2-D data the ODE's exact likelihood (exact trace)
    comes out far below the variational bound of the 15-step tiny run (8.3 against 600 bits/dim: its
    reverse steps are poor Gaussians, which costs the bound, while the ODE only needs a smooth field)."""
    assert main(["nll", str(tiny_spiral_run), "--n", "50", "--trace", "exact", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["nll_bits_per_dim"] < report["vlb_bits_per_dim"]
    assert report["data"] == "held-out spiral points"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["inpaint", "{run}", "--image", "{p}/digit.png", "--mask", "{p}/small.png"],
            "is 20×20, the image 28×28",
        ),
        (["inpaint", "{run}", "--image", "{p}/rgb.png", "--mask", "{p}/mask.png"], "this is 3×28×28"),
        (["inpaint", "{run}", "--image", "{p}/digit.png", "--mask", "{p}/white.png"], "nothing to inpaint"),
        (
            ["inpaint", "{run}", "--image", "{p}/two.npy", "--mask", "{p}/mask.png"],
            "holds 2 images; give one",
        ),
        (["inpaint", "{run}", "--image", "{p}/broken.png", "--mask", "{p}/mask.png"], "not a readable image"),
        (["inpaint", "{run}", "--image", "{p}/none.png", "--mask", "{p}/mask.png"], "no such file"),
        (
            ["inpaint", "{run}", "--image", "{p}/digit.png", "--mask", "{p}/mask.png", "--resample", "0"],
            "--resample",
        ),
        (
            ["inpaint", "{run}", "--image", "{p}/digit.png", "--mask", "{p}/mask.png", "--label", "10"],
            "labels 0…9",
        ),
        (["edit", "{run}", "--image", "{p}/small.png", "--strength", "0.5"], "this is 1×20×20"),
        (
            ["edit", "{run}", "--image", "{p}/digit.png", "--strength", "1.5"],
            "--strength 1.5: strength must lie",
        ),
        (["edit", "{run}", "--image", "{p}/digit.png", "--strength", "-0.1"], "strength must lie in [0, 1]"),
        (["edit", "{spiral}", "--image", "{p}/digit.png", "--strength", "0.5"], "are 2-D points"),
        (["invert", "{run}", "--image", "{p}/digit.png", "--refine", "-1"], "--refine -1"),
        (["interpolate", "{run}", "--seeds", "1", "2", "--frames", "1"], "at least 2"),
        (["nll", "{run}", "--n", "20000"], "there are 10000 mnist test images"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    cond_run, tiny_spiral_run, pictures, tmp_path, capsys, argv, message
):
    folder, _ = pictures
    out = tmp_path / "out.png"
    (tmp_path / "keep.txt").write_text("keep me")
    argv = [a.format(run=cond_run, spiral=tiny_spiral_run, p=folder) for a in argv]
    if argv[0] != "nll":
        argv += ["--out", str(out)]
    line = refused(capsys, argv)
    assert message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_an_output_that_cannot_be_written_is_refused_before_any_work(cond_run, pictures, tmp_path, capsys):
    folder, _ = pictures
    argv = [
        "edit",
        cond_run,
        "--image",
        folder / "digit.png",
        "--strength",
        "0.5",
        "--out",
        tmp_path / "x.jpg",
    ]
    assert "write a .png or .npy file" in refused(capsys, argv)
    argv = ["invert", cond_run, "--image", folder / "digit.png", "--out", "/sys/z.npy"]
    assert "cannot write in /sys" in refused(capsys, argv)
    assert list(tmp_path.iterdir()) == []


def test_the_editing_benchmark_runs_on_a_tiny_run(cond_run, tmp_path, mnist_lenet, benchmark_script):
    """benchmarks/editing.py end to end at N = 4 with a few steps: every section reports, in one JSON."""
    bench = benchmark_script("editing")
    out = tmp_path / "report.json"
    small = ["--n", "4", "--nll-n", "2", "--steps", "3", "--jump-length", "2", "--resample", "2"]
    small += ["--sdedit-steps", "3", "--strengths", "0.5", "--inversion-steps", "3", "--batch-size", "2"]
    assert bench.main(["--run", str(cond_run), *small, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["inpainting"]) == {"repaint", "replacement"}
    assert 0 <= report["inpainting"]["repaint"]["label_agreement"] <= 1
    assert [r["strength"] for r in report["sdedit"]] == [0.5]
    assert [(r["of"], r["steps"]) for r in report["inversion"]] == [("test digits", 3), ("DDIM samples", 3)]
    assert report["inversion"][1]["noise_mean_abs_error"] >= 0
    assert report["likelihood"]["nll_bits_per_dim"] > 0 and report["likelihood"]["vlb_bits_per_dim"] > 0
