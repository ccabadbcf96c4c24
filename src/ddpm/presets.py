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
    """The 2-D spiral with the default (residual) MLP: quick on a CPU (times in ``docs/results.md``)."""
    return Config(
        data=DataConfig(name="spiral"),
        model=ModelConfig("mlp", {"hidden": 128, "layers": 4}),
        diffusion=DiffusionConfig(schedule="cosine", T=200, clip_x0=1.0),
        train=TrainConfig(
            num_threads=1,  # a tiny MLP: more threads only add synchronisation (and suffer on a busy CPU)
            precision="fp32",
            batch_size=512,
            lr=2e-3,
            max_steps=2000,
            warmup_steps=100,
            ema_decay=0.995,
            log_every=100,
            checkpoint_every=1000,
            sample_n=1000,
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


def shapes3_cond() -> Config:
    """The spiral's MLP told the class of ``shapes3`` (spiral, s-curve, moons on top of one another), with
    15 % label dropout for classifier-free guidance (notebook 3.1)."""
    cfg = spiral()
    cfg.data = DataConfig(name="shapes3", n_samples=90_000)  # 30,000 points per class
    cfg.model.kwargs["num_classes"] = 3
    cfg.diffusion.p_uncond = 0.15
    cfg.train.max_steps = 4000
    # The end-of-training metrics of ``ddpm.run.train`` know only the unlabelled toy sets; notebook 3.1
    # measures each class against its own curve instead.
    cfg.sample.eval_n = 0
    return cfg


def toy(name: str) -> Callable[[], Config]:
    def make() -> Config:
        cfg = spiral()
        cfg.data.name = name
        return cfg

    make.__doc__ = f"The {name.replace('_', ' ')} 2-D data set with the spiral's recipe."
    return make


def _mnist(model: ModelConfig, dataset: str = "mnist", **diffusion) -> Config:
    """Common recipe of the image presets: batch 64, AdamW with warm-up and cosine decay, EMA, a sample
    grid every 500 steps. The default budget of 3,000 steps suits a CPU (speeds in ``docs/results.md``); on a
    GPU raise it with ``--max-steps``."""
    return Config(
        data=DataConfig(name=dataset, image_size=28, channels=1),
        model=model,
        diffusion=DiffusionConfig(**{"schedule": "cosine", "T": 1000, "clip_x0": 1.0, **diffusion}),
        train=TrainConfig(
            batch_size=64,
            lr=5e-4,
            warmup_steps=200,
            max_steps=3000,
            ema_decay=0.999,
            log_every=20,
            checkpoint_every=500,
            sample_every=500,
            sample_n=36,
        ),
        # 100 network evaluations keep periodic grids affordable on a CPU, with the sampler and spacing
        # samplers.AUTO gives for 100; `ddpm sample --steps` chooses per call.
        sample=SampleConfig(steps=100, eval_n=0),
    )


def _series(time_conditioning: bool) -> Config:
    cfg = _mnist(ModelConfig("series_unet", {"time_conditioning": time_conditioning}), schedule="linear")
    # The small UNets learn faster at 4× the big UNet's rate (docs/results.md, "The demo model").
    cfg.train.lr = 2e-3
    return cfg


def mnist_tiny() -> Config:
    """The series' UNet without time conditioning (about 54k parameters): it must guess the noise level."""
    return _series(time_conditioning=False)


def mnist_time() -> Config:
    """The same UNet with a sinusoidal time embedding added in every block (about 61k parameters)."""
    return _series(time_conditioning=True)


UNET = {
    "model_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [7],
    "num_heads": 4,
    "dropout": 0.0,
}


# The UNet presets weight the ε-loss by Min-SNR-5 (Hang et al. 2023): on MNIST it beat plain MSE at the same
# budget (benchmarks/README.md, "The recipe search").
UNET_MIN_SNR_GAMMA = 5.0


# The unconditional UNet presets sample with autoguidance (Karras et al. 2024) by their own checkpoint at a
# fifth of training, w = 1: on the 60-minute MNIST model it more than halved FLD at the cost of a second
# network evaluation a step, and the guide at a fifth beat the one at a tenth (benchmarks/README.md,
# "Autoguidance and guidance intervals"). They guide only for σ_t in (0.28, 5.42] (Kynkäänniemi et al. 2024):
# guided everywhere, 10 steps scored worse than no guidance, in the interval better; at 20 steps the interval
# was about even with guidance everywhere (one seed better, one worse) at fewer evaluations
# (benchmarks/README.md, "Autoguidance in an interval").
GUIDE_AT, AUTOGUIDANCE, GUIDE_INTERVAL = 0.2, 1.0, (0.28, 5.42)


def _autoguided(cfg: Config) -> Config:
    cfg.sample.guide_at, cfg.sample.autoguidance = GUIDE_AT, AUTOGUIDANCE
    cfg.sample.guidance_interval = GUIDE_INTERVAL
    return cfg


def mnist_unet() -> Config:
    """The real UNet (ResNet blocks, attention at 7×7, time embedding; 1.1M parameters), cosine schedule,
    Min-SNR-5 loss weighting, autoguided by its checkpoint at a fifth of training, for σ_t in (0.28, 5.42]."""
    return _autoguided(_mnist(ModelConfig("unet", dict(UNET)), min_snr_gamma=UNET_MIN_SNR_GAMMA))


def mnist_cond() -> Config:
    """The UNet with a class embedding and 10 % label dropout, for classifier-free guidance."""
    return _mnist(
        ModelConfig("unet", {**UNET, "num_classes": 10}), p_uncond=0.1, min_snr_gamma=UNET_MIN_SNR_GAMMA
    )


def fashion_unet() -> Config:
    """The UNet and its recipe on Fashion-MNIST."""
    cfg = _mnist(ModelConfig("unet", dict(UNET)), dataset="fashion-mnist", min_snr_gamma=UNET_MIN_SNR_GAMMA)
    return _autoguided(cfg)


PRESETS: dict[str, Callable[[], Config]] = {
    "spiral": spiral,
    "spiral-series": spiral_series,
    "moons": toy("moons"),
    "s-curve": toy("s_curve"),
    "swiss-roll": toy("swiss_roll"),
    "eight-gaussians": toy("eight_gaussians"),
    "shapes3-cond": shapes3_cond,
    "mnist-tiny": mnist_tiny,
    "mnist-time": mnist_time,
    "mnist-unet": mnist_unet,
    "mnist-cond": mnist_cond,
    "fashion-unet": fashion_unet,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give a config file"
        )
    cfg = PRESETS[name]()
    cfg.preset = name
    return cfg
