"""The part-1 walkthrough notebooks run as scripts and write their figures.

Each notebook runs in its own subprocess with ``--out`` in a temporary folder. They are started together
(one torch thread each) so that their start-up — mostly importing torch, scipy and matplotlib — overlaps,
and each test then waits for its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TIMEOUT_S = 300

# notebook -> (extra arguments, files it must write)
CASES = {
    "1_1_spiral": ([], ["spiral.png", "toy_datasets.png"]),
    "1_2_gaussian_diffusion": (
        [],
        [
            "noising_linear.png",
            "noising_cosine.png",
            "forward_linear.gif",
            "forward_cosine.gif",
            "posterior_walk_linear.gif",
            "posterior_walk_linear.png",
        ],
    ),
    "1_3_train_denoiser": (
        ["--steps", "200", "--n", "500"],
        [
            "run/loss.png",
            "run/metrics.json",
            "samples.png",
            "reverse_process.gif",
            "reverse_x0_guess.gif",
            "reverse_snapshots.png",
            "reverse_x0_guesses.png",
        ],
    ),
    "1_4_plot_coefficients": ([], ["coefficients.png", "alpha_bar_vs_T.png"]),
}
TEST_OF = {
    "1_1_spiral": "test_1_1_spiral",
    "1_2_gaussian_diffusion": "test_1_2_gaussian_diffusion",
    "1_3_train_denoiser": "test_1_3_train_denoiser",
    "1_4_plot_coefficients": "test_1_4_plot_coefficients",
}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    """Start every selected notebook at once; yields {name: (process, out folder, log file)}."""
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name, (extra, _) in CASES.items():
        if TEST_OF[name] not in selected:
            continue
        out = tmp_path_factory.mktemp(name)
        log = open(out.parent / f"{name}.log", "w+")
        cmd = [
            sys.executable,
            str(NOTEBOOKS / f"{name}.py"),
            "--out",
            str(out / "figs"),
            "--threads",
            "1",
            *extra,
        ]
        procs[name] = (
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
            out,
            log,
        )
    yield procs
    for proc, _, log in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def finish(launched, name: str) -> tuple[Path, str]:
    """Wait for notebook ``name``; assert it succeeded and wrote its files; returns (figures folder, log)."""
    proc, out, log = launched[name]
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{name} did not finish within {TIMEOUT_S} s")
    log.seek(0)
    text = log.read()
    assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{text[-4000:]}"
    figs = out / "figs"
    for rel in CASES[name][1]:
        path = figs / rel
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {rel}\n{text[-2000:]}"
        assert f"wrote {path}" in text or rel.startswith("run/"), f"{name} did not report writing {rel}"
    for path in figs.rglob("*.png"):
        with Image.open(path) as im:
            im.verify()
    for path in figs.rglob("*.gif"):
        with Image.open(path) as im:
            assert im.format == "GIF"
            assert im.n_frames >= 10, f"{path.name} has only {im.n_frames} frames"
            im.seek(im.n_frames - 1)  # decodes through to the last frame
    return figs, text


def test_1_1_spiral(launched):
    _, text = finish(launched, "1_1_spiral")
    assert "(10000, 2) points" in text


def test_1_2_gaussian_diffusion(launched):
    _, text = finish(launched, "1_2_gaussian_diffusion")
    # Every torch-vs-NumPy cross-check printed a tiny difference.
    diffs = [
        float(line.rsplit("=", 1)[1].split(",")[0]) for line in text.splitlines() if "|torch - numpy|" in line
    ]
    assert len(diffs) >= 8 and max(diffs) < 1e-10, diffs


@pytest.mark.slow
def test_1_3_train_denoiser(launched):
    figs, text = finish(launched, "1_3_train_denoiser")
    assert "trained model" in text and "energy_distance_floor" in text
    assert (figs / "run" / "config.json").is_file()


def test_1_4_plot_coefficients(launched):
    _, text = finish(launched, "1_4_plot_coefficients")
    assert "sqrt(alpha_bar_T) = 6.35e-03" in text  # the linear schedule at T = 1000
