"""The layers hold: config is a leaf, and sampling, evaluation and ``ddpm info`` never load the training loop.

Each check imports modules in a fresh interpreter and looks at what ended up in ``sys.modules``, so an
import added in the wrong direction fails here, not in a reader's head.
"""

import json
import subprocess
import sys

import pytest


def loaded_after(*modules: str) -> set[str]:
    """The ``ddpm`` modules a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'ddpm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_config_is_a_leaf():
    assert loaded_after("ddpm.config") == {"ddpm", "ddpm.config", "ddpm.fileio"}


@pytest.mark.parametrize(
    "module",
    [
        "ddpm.diffusion",
        "ddpm.samplers",
        "ddpm.editing",
        "ddpm.likelihood",
        "ddpm.data",
        "ddpm.engine.trainer",
    ],
)
def test_math_data_and_engine_stay_apart(module):
    loaded = loaded_after(module)
    assert not {"ddpm.run", "ddpm.training", "ddpm.evaluate", "ddpm.cli"} & loaded
    if module in ("ddpm.editing", "ddpm.likelihood"):  # math on tensors: no model, no engine, no metrics
        assert not {"ddpm.models", "ddpm.engine", "ddpm.metrics", "ddpm.data"} & loaded
    if module.startswith("ddpm.engine") or module == "ddpm.data":  # handed a loss; know no diffusion
        assert not {"ddpm.diffusion", "ddpm.samplers", "ddpm.schedules", "ddpm.models"} & loaded


def test_sampling_and_evaluation_never_load_the_training_loop():
    loaded = loaded_after("ddpm.run", "ddpm.evaluate", "ddpm.edit", "ddpm.export", "ddpm.cli")
    assert "ddpm.engine.trainer" not in loaded and "ddpm.training" not in loaded
