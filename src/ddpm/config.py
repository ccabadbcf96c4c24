"""Run configuration: plain dataclasses, saved as ``config.json`` in every run folder.

A run is rebuilt from that file alone, so ``sample``, ``info`` and resuming need no flag repeated. This
module is a leaf: it knows the values' types and ranges; the names (a sampler, a schedule, a model, …) are
checked by the registries that own them (:func:`ddpm.run.check_config`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ddpm.fileio import atomic_write_text


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line meant for the user."""


@dataclass
class DataConfig:
    name: str = "spiral"  # a 2-D toy set, "mnist", "fashion-mnist" or "folder"
    n_samples: int = 100_000  # 2-D sets: points drawn once from data_seed
    noise: float = 0.0  # 2-D sets: Gaussian noise added to each point
    data_seed: int = 1234
    root: str | None = None  # image data cache (MNIST) or the image folder itself ("folder")
    image_size: int = 28  # "folder": images are resized to this
    channels: int = 1  # "folder": 1 (grayscale) or 3 (RGB)


@dataclass
class ModelConfig:
    name: str = "mlp"  # a key of ddpm.models.MODELS
    kwargs: dict = field(default_factory=dict)  # passed to the model's constructor

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional model (label ``num_classes`` means "no label"), else None."""
        return self.kwargs.get("num_classes")


@dataclass
class DiffusionConfig:
    schedule: str = "linear"
    T: int = 1000
    zero_terminal_snr: bool = False
    prediction: str = "eps"  # what the network predicts: eps, x0, v, or edm (EDM's preconditioned F)
    variance: str = "small"  # reverse-process variance: small (β̃) or large (β)
    clip_x0: float | None = 1.0  # clamp the predicted x_0 to [-c, c] while sampling
    min_snr_gamma: float | None = None  # Min-SNR-γ loss weighting; None = plain MSE
    noise_levels: str = "uniform"  # training steps t: uniform, or lognormal (EDM's ln σ ~ N(mean, std²))
    lognormal_mean: float = -1.2  # P_mean of EDM's log-normal σ (Karras et al. 2022, Table 1)
    lognormal_std: float = 1.2  # P_std
    p_uncond: float = 0.0  # label dropout for classifier-free guidance (conditional models)


@dataclass
class TrainConfig:
    batch_size: int = 256  # per process (see the README on distributed training)
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # the cosine decay ends at lr × min_lr_ratio
    max_steps: int = 10_000  # stop (and the cosine horizon)
    max_minutes: float | None = None  # wall-clock budget of one invocation
    # With max_minutes: once the first steps of an invocation are timed, lower max_steps (the cosine horizon)
    # to the steps the rest of the budget fits, so that the schedule ends inside it on any machine
    fit_horizon: bool = False
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay = min(ema_decay, (1 + step) / (10 + step))
    posthoc_ema: tuple = ()  # σ_rel of power-function EMAs kept for post-hoc EMA, e.g. (0.05, 0.1); () = off
    posthoc_every: int = 100  # steps between their snapshots in RUN/posthoc-ema (and one at max_steps)
    precision: str = "auto"  # fp32, bf16 (autocast) or auto (bf16 where the hardware has it natively)
    channels_last: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:1, …
    num_threads: int | None = None  # CPU threads; None = torch's default
    log_every: int = 50
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end and on Ctrl-C
    checkpoint_minutes: float = 5.0  # …and at least this often
    keep_checkpoints: int = 2
    sample_every: int = 0  # steps between sample grids; 0 = only at the end
    sample_n: int = 64  # points or images in periodic samples


@dataclass
class SampleConfig:
    # "auto": the sampler and spacing that ddpm.samplers.AUTO gives for the number of steps; runs from
    # before it saved "ddpm" and "uniform", and keep them
    sampler: str = "auto"  # or a name of ddpm.samplers.SAMPLERS: ddpm, ddim, dpmpp2m, heun, unipc, …
    steps: int | None = None  # network evaluations per sample; None = T
    spacing: str = "auto"  # which steps when fewer than T: uniform, trailing, quadratic, logsnr, karras
    eta: float = 0.0  # DDIM's η: 0 deterministic, 1 ancestral
    s_churn: float | None = None  # heun-churn's S_churn, S_tmin, S_tmax, S_noise (Karras et al. 2022,
    s_tmin: float | None = None  # Alg. 2); None: the sampler's defaults, the paper's for CIFAR-10
    s_tmax: float | None = None
    s_noise: float | None = None
    eval_n: int = 2000  # samples drawn for the metrics written at the end of training
    # Autoguidance (Karras et al. 2024) of an unconditional model by its own earlier checkpoint, at the
    # fraction guide_at of train.max_steps, which training keeps: ε̃ = (1 + w) ε − w ε_guide with
    # w = autoguidance (0: none; --guidance w per call)
    autoguidance: float = 0.0
    guide_at: float | None = None
    # Classifier-free guidance (Ho & Salimans 2022) of a class-conditional run when a call gives no
    # --guidance: ε̃ = (1 + w) ε(x, c) − w ε(x, ∅) with w = guidance (0: none)
    guidance: float = 0.0
    # The noise levels σ_t in (lo, hi] where the run's guidance acts when a call gives no
    # --guidance-interval (Kynkäänniemi et al. 2024); None: every step
    guidance_interval: tuple | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    seed: int = 0
    preset: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return _from_dict(cls, d)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            return cls.from_dict(json.loads(Path(path).read_bytes()))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except (ValueError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError (a binary file)
            raise ConfigError(f"{path}: not a valid config file ({e})") from None


def _from_dict(cls, d: dict, where: str = ""):
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping for {where.rstrip('.') or cls.__name__}, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        kwargs[name] = (
            _from_dict(hint, value, f"{where}{name}.")
            if dataclasses.is_dataclass(hint)
            else _coerce(where + name, value, hint)
        )
    return cls(**kwargs)


_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    tuple: "a list",
    dict: "a mapping",
}


def _coerce(name: str, value, hint):
    """Check ``value`` against a field's type, converting where harmless (int → float, list → tuple)."""
    args, nullable = typing.get_args(hint), ""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint, nullable = next(a for a in args if a is not type(None)), " or null"
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is tuple and isinstance(value, list):
        return tuple(value)
    if hint is dict and isinstance(value, dict):
        return value
    if not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {_TYPE_NAMES.get(hint, hint.__name__)}{nullable}, got {value!r}")
    return value


def _parse_value(text: str):
    """A --set value: JSON where it parses (numbers, true/false, null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _section_of(cfg: Config, key: str) -> str:
    """Resolve an undotted key such as ``precision`` to the one section that has it."""
    owners = [
        f.name
        for f in dataclasses.fields(cfg)
        if dataclasses.is_dataclass(getattr(cfg, f.name))
        and key in {g.name for g in dataclasses.fields(getattr(cfg, f.name))}
    ]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if not owners and key in {f.name for f in dataclasses.fields(cfg)}:
        return key
    where = f"several sections ({', '.join(owners)})" if owners else "no section"
    raise ConfigError(f"--set {key}: {where} has that key; write it as section.key")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings (``train.lr=3e-4``, ``precision=fp32``, ``model.kwargs.hidden=64``)."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if "." not in key:
            key = _section_of(cfg, key)
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"--set {key}: no config section {p!r}")
            node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parents)} is a value, not a section")
        is_kwargs = parents[-1:] == ["kwargs"]
        if not is_kwargs and leaf not in node:
            raise ConfigError(f"--set {key}: unknown key {leaf!r}")
        node[leaf] = _parse_value(text)
    return Config.from_dict(d)


# --- The ranges of the values -----------------------------------------------------------------------------


class Range(NamedTuple):
    """The numbers a value may take: ``lo ≤ x ≤ hi``, or strictly (``open_lo``, ``open_hi``)."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def ok(self, x) -> bool:
        above = self.lo is None or (x > self.lo if self.open_lo else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.open_hi else x <= self.hi)
        return above and below

    def what(self, x) -> str:
        """What the value must do, said for the bound it breaks (both bounds for a float's interval)."""
        if self.lo is not None and self.hi is not None and isinstance(x, float):
            return f"lie in {'(['[not self.open_lo]}{self.lo:g}, {self.hi:g}{')]'[not self.open_hi]}"
        if self.hi is not None and (x >= self.hi if self.open_hi else x > self.hi):
            return f"be less than {self.hi:,}" if self.open_hi else f"be at most {self.hi:,}"
        if self.lo == 0:
            return "be positive" if self.open_lo else "be non-negative"
        return f"be greater than {self.lo:,}" if self.open_lo else f"be at least {self.lo:,}"


class Rule(NamedTuple):
    """A value's rule that is not a range of numbers: a test, and what the value must do."""

    ok: Callable[[object], bool]
    text: str

    def what(self, x) -> str:
        return self.text


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(0, open_lo=True), Range(0), Range(1)
# The longest power-function EMA (ddpm.engine.posthoc_ema): γ = 0, the running mean of all weights so far,
# whose profile is uniform on [0, t] with standard deviation t/√12.
SIGMA_REL_MAX = 0.5 / 3**0.5  # 1/√12, written as σ_rel(γ = 0) computes it
SIGMA_REL_RANGE = "(0, 1/√12 ≈ 0.28867]"  # the lengths σ_rel a power-function EMA can have
SEEDS = Range(-(2**40), 2**40)  # every seed derived from it (seed × 1,000,003 + epoch) fits in 64 bits
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
DEVICES = "auto, cpu, cuda, cuda:N or mps"


def _two_betas(betas) -> bool:
    return len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)


def is_interval(values) -> bool:
    """The one rule for a guidance interval (σ_lo, σ_hi]: two numbers with 0 ≤ lo < hi (finite in a config,
    which :func:`validate` checks apart; ``--guidance-interval`` may give hi = inf)."""
    return len(values) == 2 and all(_is_number(v) for v in values) and 0 <= values[0] < values[1]


def _sigma_rels(values) -> bool:
    """At most 8 distinct EMA lengths σ_rel that a power-function EMA can have (ddpm.engine.posthoc_ema)."""
    fit = all(_is_number(s) and 0 < s <= SIGMA_REL_MAX for s in values)
    return fit and len(values) <= 8 and len(set(values)) == len(values)


# Every value but the names (checked by their registries: ddpm.run.check_config), the paths, the switches
# (true or false), sample.steps (1…T: validate) and the model's arguments (checked by the model:
# ddpm.models.check_kwargs). Upper bounds keep one value from hanging the machine or exhausting its memory.
RULES: dict[str, Range | Rule] = {
    "seed": SEEDS,
    "data.n_samples": Range(1, 10_000_000),  # 2-D points, held in memory
    "data.noise": NON_NEGATIVE,
    "data.data_seed": SEEDS,
    "data.image_size": Range(1, 1024),
    "data.channels": Rule(lambda c: c in (1, 3), "be 1 (grey) or 3 (RGB)"),
    "diffusion.T": Range(1, 100_000),
    "diffusion.clip_x0": POSITIVE,
    "diffusion.min_snr_gamma": POSITIVE,
    "diffusion.p_uncond": Range(0, 1, open_hi=True),
    "diffusion.lognormal_mean": Range(-20, 20),
    "diffusion.lognormal_std": Range(0, 20, open_lo=True),
    "train.batch_size": Range(1, 65_536),
    "train.lr": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.betas": Rule(_two_betas, "be two numbers in [0, 1)"),
    "train.warmup_steps": NON_NEGATIVE,
    "train.min_lr_ratio": Range(0, 1),
    "train.max_steps": NON_NEGATIVE,
    "train.max_minutes": POSITIVE,
    "train.grad_clip": POSITIVE,
    "train.grad_accum": Range(1, 1024),
    "train.ema_decay": Range(0, 1, open_hi=True),
    "train.posthoc_ema": Rule(_sigma_rels, f"be at most 8 distinct σ_rel, each in {SIGMA_REL_RANGE}"),
    "train.posthoc_every": AT_LEAST_1,
    "train.precision": Rule(lambda p: p in ("auto", "fp32", "bf16"), "be auto, fp32 or bf16"),
    "train.device": Rule(lambda d: DEVICE.fullmatch(d) is not None, f"be {DEVICES}"),
    "train.num_threads": Range(1, 1024),
    "train.log_every": AT_LEAST_1,
    "train.checkpoint_every": AT_LEAST_1,
    "train.checkpoint_minutes": POSITIVE,
    "train.keep_checkpoints": AT_LEAST_1,
    "train.sample_every": NON_NEGATIVE,
    "train.sample_n": Range(1, 100_000),
    "sample.eta": Range(0, 1),
    "sample.s_churn": Range(0, 1000),  # γ = min(S_churn / steps, √2 − 1)
    "sample.s_tmin": NON_NEGATIVE,
    "sample.s_tmax": NON_NEGATIVE,
    "sample.s_noise": Range(0, 2, open_lo=True),  # the paper's lie in 1 … 1.007
    "sample.eval_n": Range(0, 20_000),  # the 2-D metrics take a time quadratic in it
    "sample.autoguidance": Range(0, 100),
    "sample.guide_at": Range(0, 1, open_lo=True, open_hi=True),
    "sample.guidance": Range(0, 100),
    "sample.guidance_interval": Rule(is_interval, "be two numbers lo, hi with 0 ≤ lo < hi"),
}


def check_device_name(name: str) -> str:
    """The one rule for how a device is written (whether it is there is :func:`ddpm.engine.device`'s)."""
    if not isinstance(name, str) or not DEVICE.fullmatch(name):
        raise ConfigError(f"device must be {DEVICES}, got {name!r}")
    return name


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _leaves(cfg: Config):
    """Every value of the config as (key, value, type): ("train.lr", 0.001, float), …"""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            hints = typing.get_type_hints(type(value))
            for g in dataclasses.fields(value):
                yield f"{f.name}.{g.name}", getattr(value, g.name), hints[g.name]
        else:
            yield f.name, value, typing.get_type_hints(Config)[f.name]


def validate(cfg: Config) -> Config:
    """Refuse a value of the wrong type or out of its range (:data:`RULES`), each with a one-line reason;
    every number must be finite and every integer fit in 64 bits. (Names: :func:`ddpm.run.check_config`.)"""
    for key, value, hint in _leaves(cfg):
        _coerce(key, value, hint)  # the type, also for a config built in Python rather than read
        numbers = [x for x in (value if isinstance(value, tuple) else (value,)) if _is_number(x)]
        for x in numbers:
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"{key} must be a finite number, got {x}")
        rule = RULES.get(key)
        if rule is not None and value is not None and not rule.ok(value):
            null = " or null" if type(None) in typing.get_args(hint) else ""
            raise ConfigError(f"{key} must {rule.what(value)}{null}, got {value!r}")
        if any(isinstance(x, int) and not -(2**63) <= x < 2**63 for x in numbers):
            raise ConfigError(f"{key} must fit in 64 bits, got {value}")
    T, steps = cfg.diffusion.T, cfg.sample.steps
    if steps is not None and not 1 <= steps <= T:
        raise ConfigError(f"sample.steps (--steps) must lie in 1…T ({T}), got {steps}")
    if cfg.train.fit_horizon and cfg.train.max_minutes is None:
        raise ConfigError("train.fit_horizon needs train.max_minutes (--max-minutes), the budget to fit")
    if cfg.sample.autoguidance and cfg.sample.guide_at is None:
        raise ConfigError("sample.autoguidance needs sample.guide_at, where in training the guide is kept")
    if cfg.sample.guidance and cfg.model.num_classes is None:
        raise ConfigError(
            "sample.guidance is classifier-free guidance: it needs a class-conditional model "
            "(model.kwargs.num_classes); an unconditional run is autoguided (sample.autoguidance)"
        )
    return cfg
