"""Named starting points for ``ddpm train PRESET``; any value can still be changed with ``--set``."""

from __future__ import annotations

from collections.abc import Callable

from ddpm.config import (
    Config,
    ConfigError,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)


def spiral() -> Config:
    """The 2-D spiral with the default (residual) MLP: trains in well under a minute on 2 CPU cores."""
    return Config(
        data=DataConfig(name="spiral"),
        model=ModelConfig("mlp", {"hidden": 128, "layers": 4}),
        diffusion=DiffusionConfig(schedule="cosine", T=200, clip_x0=1.0),
        train=TrainConfig(
            num_threads=1,  # a tiny MLP: more threads only add synchronisation (and suffer on a busy CPU)
            batch_size=512,
            lr=2e-3,
            max_steps=2000,
            warmup_steps=100,
            ema_decay=0.995,
            log_every=100,
            checkpoint_every=1000,
        ),
        sample=SampleConfig(eval_n=2000),
    )


def spiral_series() -> Config:
    """A model the size of the series' own (a plain chain of 3 layers of 28 units, about 5.5k parameters).

    Small and without residual connections, it needs many more steps than the default model.
    """
    cfg = spiral()
    cfg.model = ModelConfig("mlp", {"hidden": 28, "layers": 3, "residual": False, "time_dim": 16})
    cfg.train.max_steps = 20_000
    cfg.train.checkpoint_every = 5000
    return cfg


def toy(name: str) -> Callable[[], Config]:
    def make() -> Config:
        cfg = spiral()
        cfg.data.name = name
        return cfg

    make.__doc__ = f"The {name.replace('_', ' ')} 2-D data set with the spiral's recipe."
    return make


PRESETS: dict[str, Callable[[], Config]] = {
    "spiral": spiral,
    "spiral-series": spiral_series,
    "moons": toy("moons"),
    "s-curve": toy("s_curve"),
    "swiss-roll": toy("swiss_roll"),
    "eight-gaussians": toy("eight_gaussians"),
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give a config file"
        )
    cfg = PRESETS[name]()
    cfg.preset = name
    return cfg
