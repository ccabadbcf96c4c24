import os
import shutil

# One BLAS thread per process, as one torch thread (``_few_threads`` below): numpy's OpenBLAS otherwise runs
# a thread per core, and on a 2-core machine shared with other work its spinning threads made the
# 2048-dimensional eigendecompositions of standard FID 2-8 times slower (one test: 8 s quiet, 30-80 s busy;
# 11 s and 32-35 s with one thread). Set before numpy is first imported (by torch, below); the notebooks,
# CLI and torchrun processes the tests start inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
import torch

# A 2-D run small enough to train in a second or two: the engine's tests use it.
TINY = [
    "model.kwargs.hidden=16",
    "model.kwargs.layers=2",
    "diffusion.T=20",
    "train.batch_size=64",
    "train.warmup_steps=5",
    "train.log_every=5",
    "train.checkpoint_every=10",
    "data.n_samples=2000",
    "sample.eval_n=200",
]


@pytest.fixture(scope="session")
def tiny_spiral_run(tmp_path_factory):
    """The tiny run (TINY, 15 steps, seed 3), trained once per session through ``ddpm train``.

    Shared by every test that needs a finished run: read it, or take a copy (``tiny_spiral_copy``) before
    changing anything in it."""
    from ddpm.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    sets = [arg for item in TINY for arg in ("--set", item)]
    assert main(["train", "spiral", "--out", str(out), "--max-steps", "15", "--seed", "3", *sets]) == 0
    return out


@pytest.fixture
def tiny_spiral_copy(tiny_spiral_run, tmp_path):
    """A copy of the session's tiny run in the test's own tmp_path, free to change."""
    copy = tmp_path / "tiny-run"
    shutil.copytree(tiny_spiral_run, copy)
    return copy


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield


# MNIST (and the LeNet-5 trained on it) come from $DDPM_DATA when set, else from a cache shared by the
# session's tests, which the library fills on first use.
DATA = os.environ.get("DDPM_DATA") or "/tmp/ddpm-data"


@pytest.fixture(scope="session")
def mnist_lenet():
    """The real LeNet-5 of ``ddpm eval``, trained once per machine (about a minute) and cached in DATA."""
    from ddpm.data.images import fetch
    from ddpm.metrics.lenet import load_lenet

    fetch("mnist", root=DATA, progress=False)
    torch.set_num_threads(1)
    return load_lenet("mnist", root=DATA, cache_dir=DATA, progress=False)


@pytest.fixture
def benchmark_script(monkeypatch):
    """``benchmark_script("curve")``: benchmarks/curve.py imported as a module (benchmarks/ is no package;
    its scripts import ``record`` from their own folder)."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
