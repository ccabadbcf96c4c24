"""A conditional run's own classifier-free guidance (``sample.guidance``) and the noise levels where any
guidance acts (``sample.guidance_interval``): what a sampling call gets when it does not say."""

import math
from pathlib import Path

import pytest

from ddpm.config import ConfigError, validate
from ddpm.presets import get_preset
from ddpm.run import guidance_of

NOWHERE = Path("no-run")  # classifier-free guidance needs no folder: no guide is loaded


def _cond(guidance=0.0, interval=None):
    cfg = get_preset("mnist-cond")
    cfg.sample.guidance, cfg.sample.guidance_interval = guidance, interval
    return validate(cfg)


@pytest.mark.parametrize(
    "given, interval, expected",
    [
        (None, None, (0.5, (0.3, 5.0))),  # the run's own weight and interval
        (2.0, None, (2.0, (0.3, 5.0))),  # the call's weight, the run's interval
        (None, (0.0, math.inf), (0.5, (0.0, math.inf))),  # the call's interval: here every step
        (0.0, None, (0.0, None)),  # --guidance 0: none, and so no interval
    ],
)
def test_a_call_takes_what_it_does_not_give_from_the_run(given, interval, expected):
    guided = guidance_of(NOWHERE, _cond(0.5, (0.3, 5.0)), given, interval=interval)
    assert (guided.weight, guided.interval) == expected
    assert guided.guide is None


def test_a_run_without_its_own_guidance_is_sampled_as_before():
    guided = guidance_of(NOWHERE, _cond(), None)
    assert (guided.weight, guided.interval) == (None, None)
    assert guidance_of(NOWHERE, _cond(0.0, (0.3, 5.0)), None).interval is None  # no weight, no interval
    assert guidance_of(NOWHERE, _cond(), 1.5).weight == 1.5


@pytest.mark.parametrize(
    "preset, sets, message",
    [
        ("mnist-unet", {"guidance": 0.5}, "sample.guidance is classifier-free guidance: it needs a class-"),
        ("mnist-cond", {"guidance": -1.0}, "sample.guidance must"),
        ("mnist-cond", {"guidance_interval": (5.0, 0.3)}, "sample.guidance_interval must be two numbers"),
        ("mnist-cond", {"guidance_interval": (0.3,)}, "sample.guidance_interval must be two numbers"),
        ("mnist-cond", {"guidance_interval": (-1.0, 2.0)}, "sample.guidance_interval must be two numbers"),
        ("mnist-cond", {"guidance_interval": (0.3, math.inf)}, "must be a finite number"),
    ],
)
def test_the_settings_are_checked(preset, sets, message):
    cfg = get_preset(preset)
    for key, value in sets.items():
        setattr(cfg.sample, key, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
