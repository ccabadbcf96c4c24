"""Fuzzing ``--set``: random keys of the spiral preset's config (model arguments included) with hostile
values (out of range, of the wrong type, NaN, infinite, negative, huge) never give a traceback: ``ddpm
train`` ends with status 0, or with status 2 and one ``ddpm: error:`` line.

The values are chosen so that a valid draw stays cheap (2 steps of the tiny spiral run): small numbers, or
numbers beyond every upper bound; no image data set (an image run would take minutes).
"""

import contextlib
import dataclasses
import io
import json
import re
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpm.cli import main
from ddpm.models.mlp import MLPDenoiser
from ddpm.presets import get_preset
from tests.conftest import TINY


def _keys() -> list[str]:
    cfg = get_preset("spiral")
    keys = []
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(section)]
            keys += [g.name for g in dataclasses.fields(section)]  # section-less forms, some ambiguous
        else:
            keys.append(f.name)
    keys += [f"model.kwargs.{arg}" for arg in MLPDenoiser.RANGES] + ["model.kwargs.residual"]
    return keys + ["model.kwargs.width", "train.nope", "model.kwargs.hidden.x", "nope"]


WORDS = ["", "abc", "cuda", "cuda:7", "cpu", "auto", "mps", "bf16", "fp32", "unet", "series_unet", "ddim"]
WORDS += ["cosine", "sigmoid", "x0", "v", "large", "trailing", "shapes3", "moons"]  # never an image set
VALUES = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "null", "true", "false", "[]", "{}", '{"a": 1}', "1e9"]),
    st.sampled_from(WORDS),
    st.integers(-3, 4).map(str),
    st.integers(10**8, 10**30).map(lambda n: str(n * (-1) ** (n % 2))),  # beyond every upper bound
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
    st.lists(st.one_of(st.floats(-2, 2), st.integers(-3, 3), st.just("a")), max_size=3).map(json.dumps),
)
SETTINGS = st.lists(st.tuples(st.sampled_from(_keys()), VALUES), min_size=1, max_size=3)
PROGRESS = re.compile(r"^(train|sampling): ")  # tqdm's bars, drawn before an error found while training


@settings(
    max_examples=40,
    deadline=30_000,  # ms; a valid draw takes about a second
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(SETTINGS)
def test_random_settings_never_give_a_traceback(pairs):
    sets = [*TINY, "train.sample_n=200", *(f"{key}={value}" for key, value in pairs)]
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "spiral", "--out", f"{tmp}/run", "--max-steps", "2"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*argv, *(a for s in sets for a in ("--set", s))])
    text = err.getvalue()
    lines = [line for line in re.split(r"[\r\n]", text) if line.strip() and not PROGRESS.match(line)]
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, text)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("ddpm: error: "), (pairs, text)
    else:
        assert not lines, (pairs, text)
