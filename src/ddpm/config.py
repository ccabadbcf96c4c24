"""Run configuration: plain dataclasses, saved as ``config.json`` in every run folder.

A run is rebuilt from that file alone, so ``sample``, ``info`` and resuming need no flag repeated. This
module is a leaf: it knows the values' types and ranges; the names (a sampler, a schedule, a model, …) are
checked by the registries that own them (:func:`ddpm.run.check_config`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

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
    prediction: str = "eps"  # what the network predicts: eps, x0 or v
    variance: str = "small"  # reverse-process variance: small (β̃) or large (β)
    clip_x0: float | None = 1.0  # clamp the predicted x_0 to [-c, c] while sampling
    min_snr_gamma: float | None = None  # Min-SNR-γ loss weighting; None = plain MSE
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
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay = min(ema_decay, (1 + step) / (10 + step))
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
    sampler: str = "ddpm"  # ddpm, ddim, dpmpp2m or dpmpp2m-sde (ddpm.samplers.SAMPLERS)
    steps: int | None = None  # None = all T steps
    spacing: str = "uniform"  # which steps when fewer than T: uniform, trailing, quadratic, logsnr
    eta: float = 0.0  # DDIM's η: 0 deterministic, 1 ancestral
    eval_n: int = 2000  # samples drawn for the metrics written at the end of training


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


def _from_dict(cls, d: dict):
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        kwargs[name] = (
            _from_dict(hint, value) if dataclasses.is_dataclass(hint) else _coerce(name, value, hint)
        )
    return cls(**kwargs)


def _coerce(name: str, value, hint):
    """Check ``value`` against a field's type, converting where harmless (int → float, list → tuple)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is tuple and isinstance(value, list):
        return tuple(value)
    if hint is dict and isinstance(value, dict):
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
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
        is_kwargs = parents[-1:] == ["kwargs"]
        if not is_kwargs and leaf not in node:
            raise ConfigError(f"--set {key}: unknown key {leaf!r}")
        node[leaf] = _parse_value(text)
    return Config.from_dict(d)


def validate(cfg: Config) -> Config:
    """Refuse values out of range, each with a one-line reason (names: :func:`ddpm.run.check_config`)."""
    tr, df = cfg.train, cfg.diffusion
    checks = [
        (df.T >= 1, f"diffusion.T must be at least 1, got {df.T}"),
        (df.clip_x0 is None or df.clip_x0 > 0, "diffusion.clip_x0 must be positive or null"),
        (
            df.min_snr_gamma is None or df.min_snr_gamma > 0,
            "diffusion.min_snr_gamma must be positive or null",
        ),
        (0 <= df.p_uncond < 1, "diffusion.p_uncond must lie in [0, 1)"),
        (tr.max_steps >= 0, f"train.max_steps must be non-negative, got {tr.max_steps}"),
        (tr.max_minutes is None or tr.max_minutes > 0, "train.max_minutes must be positive"),
        (tr.batch_size >= 1, f"train.batch_size must be at least 1, got {tr.batch_size}"),
        (tr.grad_accum >= 1, "train.grad_accum must be at least 1"),
        (tr.lr > 0, f"train.lr must be positive, got {tr.lr}"),
        (tr.warmup_steps >= 0, "train.warmup_steps must be non-negative"),
        (0 <= tr.ema_decay < 1, "train.ema_decay must lie in [0, 1)"),
        (
            tr.precision in ("auto", "fp32", "bf16"),
            f"train.precision must be auto, fp32 or bf16, got {tr.precision!r}",
        ),
        (tr.keep_checkpoints >= 1, "train.keep_checkpoints must be at least 1"),
        (
            tr.log_every >= 1 and tr.checkpoint_every >= 1,
            "train.log_every and train.checkpoint_every must be ≥ 1",
        ),
        (cfg.data.n_samples >= 1, "data.n_samples must be at least 1"),
        (
            cfg.sample.steps is None or 1 <= cfg.sample.steps <= df.T,
            f"sample.steps (--steps) must lie in 1…T ({df.T}), got {cfg.sample.steps}",
        ),
        (cfg.sample.eval_n >= 0, "sample.eval_n must be non-negative"),
        (0 <= cfg.sample.eta <= 1, "sample.eta must lie in [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg
