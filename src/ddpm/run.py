"""One run = one folder. Rebuild a run's pieces from its config, load it back, and sample from it.

Training a run is :mod:`ddpm.training`; sampling, ``ddpm eval`` and ``ddpm info`` need only this module,
which never imports the training loop. The CLI and the notebooks call these functions and hold no logic
of their own.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddpm.config import Config, ConfigError, validate
from ddpm.data import sample_shape
from ddpm.data.images import DATASETS
from ddpm.diffusion import NOISE_LEVELS, PREDICTIONS, VARIANCES
from ddpm.engine import checkpoint as ckpt
from ddpm.engine import posthoc_ema
from ddpm.engine.device import resolve_device
from ddpm.models import MODELS, SHAPE_ARGUMENTS, build_model, check_kwargs, parameter_count
from ddpm.progress import progress_bar
from ddpm.registry import check_name
from ddpm.samplers import (
    SAMPLERS,
    SPACINGS,
    Denoiser,
    auto_sampling,
    autoguidance,
    classifier_free_guidance,
    get_sampler,
    guidance_interval,
    make_denoiser,
    make_timesteps,
    network_evaluations,
    sampler_options,
    steps_within,
)
from ddpm.schedules import Schedule, make_schedule

CONFIG_FILE = "config.json"
# Written by ``ddpm export`` (:mod:`ddpm.export`): the folder holds only the run's final EMA weights, to
# sample and evaluate; nothing to train on from.
EXPORT_FILE = "export.json"
AUTO = "auto"  # sample.sampler or sample.spacing chosen by ddpm.samplers.AUTO

# The largest model trained: weights, EMA, gradients and AdamW's two moments take 20 bytes a parameter (4 GB).
MAX_PARAMETERS = 200_000_000


class RunError(ValueError):
    """A run folder that cannot be used as asked; the message is one line."""


# --- A run's pieces, from its config ---------------------------------------------------------------------


def build_schedule(cfg: Config) -> Schedule:
    d = cfg.diffusion
    return make_schedule(d.schedule, d.T, zero_terminal_snr=d.zero_terminal_snr)


def check_config(cfg: Config) -> Config:
    """Refuse a config that cannot work, in one line: the ranges of its values (:func:`ddpm.config.validate`),
    each name, checked by the registry that owns it, then whether data and model fit together
    (:func:`check_model`). Returns ``cfg``."""
    validate(cfg)
    d = cfg.diffusion
    names = {
        "diffusion.schedule": lambda: build_schedule(cfg),
        "diffusion.prediction": lambda: check_name("prediction", d.prediction, PREDICTIONS),
        "diffusion.variance": lambda: check_name("variance", d.variance, VARIANCES),
        "diffusion.noise_levels": lambda: check_name("noise levels", d.noise_levels, NOISE_LEVELS),
        "model.name": lambda: check_name("model", cfg.model.name, MODELS),
        "data.name": lambda: sample_shape(cfg.data),
        "sample.sampler": lambda: cfg.sample.sampler == AUTO or get_sampler(cfg.sample.sampler),
        "sample.spacing": lambda: check_name("spacing", cfg.sample.spacing, (*SPACINGS, AUTO)),
    }
    for key, check in names.items():
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    check_model(cfg)
    return cfg


def check_model(cfg: Config) -> None:
    """The data and the model fit together: images of the set's own shape; a model for points or for images,
    as the data are, with arguments of the types and in the ranges it declares
    (:func:`ddpm.models.check_kwargs`), the data's width, and at most :data:`MAX_PARAMETERS` parameters.
    Nothing is allocated."""
    data, name = cfg.data, cfg.model.name
    if data.name in DATASETS:
        side = DATASETS[data.name].image_shape[0]
        if data.channels != 1:
            raise ConfigError(f"data.channels must be 1 for {data.name} (grey images), got {data.channels}")
        if data.image_size != side:
            raise ConfigError(f"data.image_size must be {side} for {data.name}, got {data.image_size}")
    kind = "images" if is_image(cfg) else "points"
    if MODELS[name].data != kind:
        fits = " or ".join(n for n, entry in MODELS.items() if entry.data == kind)
        raise ConfigError(
            f"model.name: {name!r} is a model for {MODELS[name].data}, but data.name {data.name!r} holds "
            f"{kind}; choose {fits}"
        )
    kwargs = model_kwargs(cfg)
    try:
        check_kwargs(name, kwargs)
    except ValueError as e:
        raise ConfigError(f"model.kwargs.{e}") from None
    width = sample_shape(data)[0]
    for arg in SHAPE_ARGUMENTS[kind]:
        if kwargs.get(arg) not in (None, width):
            what = "dimension of the points" if kind == "points" else "channels of the images (data.channels)"
            raise ConfigError(f"model.kwargs.{arg} must be {width}, the {what}, got {kwargs[arg]}")
    try:
        n = parameter_count(name, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot build model {name!r}: {e}") from None
    if n > MAX_PARAMETERS:
        raise ConfigError(
            f"model.kwargs give model {name!r} {n:,} parameters, more than the {MAX_PARAMETERS:,} allowed "
            "(training needs 20 bytes a parameter)"
        )


def load_config(path: Path) -> Config:
    """A config file, read and checked (:func:`check_config`); every error names the file."""
    cfg = Config.load(path)
    try:
        return check_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def is_image(cfg: Config) -> bool:
    """Whether the run's samples are images (C, H, W) rather than 2-D points."""
    return len(sample_shape(cfg.data)) == 3


def model_kwargs(cfg: Config) -> dict:
    """The model's constructor arguments: the config's, and the images' channels unless it gives them."""
    kwargs = dict(cfg.model.kwargs)
    if is_image(cfg):
        kwargs.setdefault("in_channels", cfg.data.channels)
    return kwargs


def make_model(cfg: Config, source: str = "") -> nn.Module:
    """The run's network, with a one-line error for constructor arguments it does not take and for torch's
    errors while building it (out of memory, say)."""
    try:
        return build_model(cfg.model.name, **model_kwargs(cfg))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{source}cannot build model {cfg.model.name!r}: {e}") from None


# --- How a run samples -----------------------------------------------------------------------------------


# The options one sampler takes, as the command line writes them and as the paper names them.
SAMPLER_OPTIONS = {
    "eta": ("--eta", "η"),
    "s_churn": ("--s-churn", "S_churn"),
    "s_tmin": ("--s-tmin", "S_tmin"),
    "s_tmax": ("--s-tmax", "S_tmax"),
    "s_noise": ("--s-noise", "S_noise"),
}


def sampling_config(
    cfg: Config,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    **options: float | None,
) -> Config:
    """A checked copy of ``cfg`` whose sampling settings take the values given (None keeps the run's own).

    The one place where ``ddpm sample``, ``ddpm eval``, ``ddpm sweep`` and the notebooks change how a run
    samples; ``steps = T`` (or none) means every step. ``options`` are those of one sampler
    (:data:`SAMPLER_OPTIONS`: ``eta``, ``s_churn``, …); one the sampler does not take is refused.
    """
    unknown = set(options) - set(SAMPLER_OPTIONS)
    if unknown:
        raise TypeError(f"sampling_config() got unexpected options: {', '.join(sorted(unknown))}")
    cfg = copy.deepcopy(cfg)
    given = {"sampler": sampler, "steps": steps, "spacing": spacing, **options}
    for key, value in given.items():
        if value is not None:
            setattr(cfg.sample, key, value)
    check_config(cfg)
    cfg = chosen(cfg)
    name = cfg.sample.sampler
    for key, value in options.items():
        if value is not None and key not in sampler_options(name, **{key: value}):
            flag, symbol = SAMPLER_OPTIONS[key]
            takers = " and ".join(n for n in SAMPLERS if sampler_options(n, **{key: value}))
            raise ConfigError(f"{flag} {value:g}: only the {takers} sampler takes {symbol}, not {name}")
    return cfg


def chosen(cfg: Config) -> Config:
    """``cfg`` with a sampler or spacing of "auto" replaced by what :func:`ddpm.samplers.auto_sampling`
    gives for its number of steps and T (a copy; ``cfg`` itself when nothing is "auto")."""
    sample = cfg.sample
    if AUTO not in (sample.sampler, sample.spacing):
        return cfg
    sampler, spacing = auto_sampling(sample_steps(cfg), cfg.diffusion.T)
    cfg = copy.deepcopy(cfg)
    cfg.sample.sampler = sampler if sample.sampler == AUTO else sample.sampler
    cfg.sample.spacing = spacing if sample.spacing == AUTO else sample.spacing
    return cfg


def sample_steps(cfg: Config) -> int:
    """The run's ``sample.steps`` (``--steps``), or T: the network evaluations its sampler may take."""
    return cfg.sample.steps or cfg.diffusion.T


def visited_steps(cfg: Config) -> int:
    """How many steps the run's sampler visits: one per evaluation, or fewer for Heun's method, whose
    steps take two (:func:`ddpm.samplers.steps_within`)."""
    return steps_within(chosen(cfg).sample.sampler, sample_steps(cfg))


def evaluations(cfg: Config) -> int:
    """The network evaluations a sample takes with the run's settings (the cost, whatever the sampler)."""
    return network_evaluations(chosen(cfg).sample.sampler, visited_steps(cfg))


def sample_timesteps(cfg: Config, schedule: Schedule) -> list[int] | None:
    """The steps the run's sampler visits: all T (None) or :func:`visited_steps` of them, spaced by
    ``sample.spacing``."""
    n = visited_steps(cfg)
    return None if n == schedule.T else make_timesteps(schedule, n, chosen(cfg).sample.spacing)


def check_labels(
    cfg: Config, label: int | torch.Tensor | None, guidance: float | None = None, guide: bool = False
) -> None:
    """The one rule for labels and guidance: labels only for a class-conditional model and within its
    classes; classifier-free guidance only for such a model, towards given labels; autoguidance (``guide``:
    a weaker model guides) for any model, and only with a weight."""
    k = cfg.model.num_classes
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise RunError(f"--guidance {guidance}: the weight w must be a finite number ≥ 0 (0: no guidance)")
    if guide and guidance is None:
        raise RunError("--guide needs --guidance, the weight w of the autoguidance")
    if guidance is not None and k is None and not guide:
        raise RunError(
            "classifier-free guidance needs a class-conditional model (model.kwargs.num_classes); "
            "an unconditional one is guided by a weaker model of its own (--guide)"
        )
    if guidance and label is None and not guide:
        raise RunError("guidance needs labels to guide towards (--label)")
    if label is None:
        return
    labels = torch.as_tensor(label)
    if k is None or labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < k:
        why = "an unconditional model" if k is None else f"labels 0…{k - 1}"
        shown = f"--label {label}" if labels.ndim == 0 else "labels"
        raise RunError(f"{shown}: the run has {why}")


def rows_of_classes(cfg: Config, n: int) -> torch.Tensor:
    """Labels for ``n`` samples of a class-conditional run, ``n / classes`` of each class in turn: a grid
    of ``n / classes`` columns shows one class a row."""
    k = cfg.model.num_classes
    if k is None:
        raise RunError("--label all: the run has an unconditional model")
    if n % k:
        raise RunError(f"--label all: --n {n} must be a multiple of the {k} classes (a row each)")
    return torch.arange(k).repeat_interleave(n // k)


def check_finite(x: torch.Tensor) -> torch.Tensor:
    """Refuse samples that are not all finite (NaN or ±inf: damaged weights, or a run that diverged);
    returns ``x``."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise RunError(
            f"{bad:,} of {x.numel():,} sampled values are not finite: the weights cannot be sampled "
            "(a diverged or damaged run?); nothing was written"
        )
    return x


class ReverseFrames:
    """A ``callback`` for :func:`sample` that keeps the reverse process of the first ``keep`` samples: the
    state x after every ``every``-th step and the last, with the step t and the guess x̂_0 it came from."""

    def __init__(self, every: int = 1, keep: int | None = None, last: int | None = None):
        self.every, self.keep, self.last = every, keep, last
        self.t: list[int] = []
        self.states: list[torch.Tensor] = []
        self.guesses: list[torch.Tensor] = []

    @classmethod
    def about(cls, frames: int, cfg: Config, keep: int | None = None) -> ReverseFrames:
        """About ``frames`` frames, evenly spaced over the run's sampling steps."""
        steps = visited_steps(cfg)
        return cls(max(1, steps // frames), keep, last=steps - 1)

    def __call__(self, i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if i % self.every == 0 or i == self.last:
            self.t.append(int(t))
            self.states.append(x[: self.keep].cpu().clone())
            self.guesses.append(x0[: self.keep].cpu().clone())


def run_denoiser(
    cfg: Config,
    model: nn.Module,
    schedule: Schedule,
    y: torch.Tensor | None = None,
    guidance=None,
    guide: nn.Module | None = None,
    interval: tuple[float, float] | None = None,
) -> Denoiser:
    """The run's network as the samplers' ``denoise(x_t, t) -> (x̂_0, ε̂)``: its prediction and clipping,
    conditioned on labels ``y`` (conditional models; None: no label), guided by weight ``guidance`` (0 or
    None: none) away from the unconditional pass (classifier-free guidance) or, given a ``guide`` network
    (:func:`guidance_of`), away from that weaker model (autoguidance), only at noise levels σ in ``interval``
    = (σ_lo, σ_hi] when given. Check labels and guidance first (:func:`check_labels`)."""
    plain = lambda x, t: model(x, t, y)  # noqa: E731
    model_fn = plain
    if guidance and guide is not None:
        model_fn = autoguidance(plain, lambda x, t: guide(x, t, y), guidance)
    elif guidance:
        model_fn = classifier_free_guidance(model, y, cfg.model.num_classes, guidance)
    if guidance and interval is not None:
        model_fn = guidance_interval(model_fn, plain, schedule, *interval)
    return make_denoiser(model_fn, schedule, cfg.diffusion.prediction, cfg.diffusion.clip_x0)


@torch.no_grad()
def sample(
    cfg: Config,
    model: nn.Module,
    schedule: Schedule,
    n: int,
    seed: int = 0,
    label: int | torch.Tensor | None = None,
    callback=None,
    batch_size: int = 4096,
    guidance: float | None = None,
    progress: bool = True,
    guide: nn.Module | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Draw ``n`` samples with the run's sampling settings (:func:`sampling_config`), in batches.

    ``label`` picks the class of conditional models: one int for all samples, or a tensor of ``n`` labels.
    ``guidance`` is the guidance weight w (0 or None: none): classifier-free guidance of a conditional
    model, or autoguidance by the weaker network ``guide``, in the σ interval ``guidance_interval`` when
    given (:func:`run_denoiser`).
    ``callback(i, t, x, x̂_0)`` sees every step of the first batch (:class:`ReverseFrames`). A progress bar
    appears on stderr once sampling has taken more than 2 s, unless ``progress`` is false.
    """
    check_labels(cfg, label, guidance, guide=guide is not None)
    cfg = chosen(cfg)
    device = next(model.parameters()).device
    labels = None
    if label is not None:
        labels = torch.as_tensor(label, dtype=torch.long, device=device).expand(n).contiguous()
    generator = torch.Generator(device).manual_seed(seed)
    sampler = get_sampler(cfg.sample.sampler)
    timesteps = sample_timesteps(cfg, schedule)
    settings = {key: getattr(cfg.sample, key) for key in SAMPLER_OPTIONS}
    options = sampler_options(cfg.sample.sampler, variance=cfg.diffusion.variance, **settings)
    bar = progress_bar(  # shown once sampling has taken more than 2 s
        total=n * visited_steps(cfg),
        desc="sampling",
        unit="img-step",
        disable=not progress,
        unit_scale=True,
        delay=2,
    )
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = None if labels is None else labels[start : start + b]
        denoise = run_denoiser(cfg, model, schedule, y, guidance, guide, guidance_interval)

        def step_callback(i, t, x, x0, first=start == 0, b=b):
            bar.update(b)
            if callback is not None and first:
                callback(i, t, x, x0)

        x_T = torch.randn((b, *sample_shape(cfg.data)), generator=generator, device=device)
        chunks.append(
            sampler(denoise, x_T, schedule, timesteps, generator=generator, callback=step_callback, **options)
        )
    bar.close()
    model.train(was_training)
    return torch.cat(chunks)


# --- A run folder, loaded back ---------------------------------------------------------------------------


def is_export(run_dir: Path) -> bool:
    """Whether ``run_dir`` was written by ``ddpm export``: the final EMA weights alone, with no raw weights
    and no optimiser state."""
    return (Path(run_dir) / EXPORT_FILE).is_file()


@dataclass
class LoadedRun:
    cfg: Config
    model: nn.Module
    schedule: Schedule
    step: int  # of the weights loaded
    checkpoint: Path
    posthoc: posthoc_ema.Reconstruction | None = None  # when the weights are a post-hoc EMA


def load_run(
    run_dir: Path, weights: str = "ema", device: str | None = None, ema_sigma_rel: float | None = None
) -> LoadedRun:
    """Rebuild a run's model from its folder alone (config.json and the latest checkpoint).

    ``ema_sigma_rel`` loads instead the post-hoc EMA of that length at the run's last snapshot, rebuilt
    from the snapshots training kept (``train.posthoc_ema``; :func:`ddpm.engine.posthoc_ema.reconstruct`).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    cfg = load_config(run_dir / CONFIG_FILE)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise RunError(f"{run_dir}: has no checkpoint yet")
    dev = resolve_device(device or cfg.train.device)
    model = make_model(cfg, source=f"{run_dir}/{CONFIG_FILE}: ")
    if ema_sigma_rel is not None:
        if weights != "ema":
            raise RunError(
                f"--ema-sigma-rel {ema_sigma_rel:g}: a post-hoc EMA replaces the EMA, not --weights {weights}"
            )
        try:
            posthoc = posthoc_ema.reconstruct(run_dir, ema_sigma_rel)
        except ckpt.CheckpointError:  # a damaged snapshot: the message names its file
            raise
        except ValueError as e:  # a length no power EMA has, or no snapshots
            raise RunError(f"--ema-sigma-rel {ema_sigma_rel:g}: {e}") from None
        ckpt.load_into(model, posthoc.tensors, posthoc.snapshots[-1].path)
        loaded = LoadedRun(cfg, model, build_schedule(cfg), posthoc.step, latest, posthoc)
    else:
        path = latest / f"{weights}.safetensors"
        if weights != "ema" and is_export(run_dir):
            raise RunError(
                f"--weights {weights}: {run_dir} is an exported run, which keeps only the EMA weights; "
                "leave out --weights, or use the run it was exported from"
            )
        ckpt.load_into(model, ckpt.load_tensors(path), path)
        loaded = LoadedRun(cfg, model, build_schedule(cfg), ckpt.load_state(latest)["step"], latest)
    loaded.model, loaded.schedule = model.to(dev).eval(), loaded.schedule.to(dev)
    return loaded


def _guide_network(path: Path, cfg: Config, device: str | None = None) -> tuple[nn.Module, Path, int]:
    """The weaker network of autoguidance, the folder and the step of its weights: the EMA weights of a
    checkpoint folder (``RUN/checkpoints/step-N``, say an early checkpoint of the run itself) or of a run
    folder's latest checkpoint. It must denoise the same data on the same diffusion as ``cfg``'s run: the
    same data set, classes, schedule, T and prediction."""
    path = Path(path)
    if (
        path.parent.name == ckpt.checkpoint_dir(path.parent.parent).name
        and (path / "ema.safetensors").is_file()
    ):
        run_dir, folder = path.parent.parent, path
    elif (path / CONFIG_FILE).is_file():
        run_dir, folder = path, ckpt.latest_checkpoint(path)
        if folder is None:
            raise RunError(f"--guide {path}: has no checkpoint yet")
    else:
        raise RunError(
            f"--guide {path}: neither a run folder nor one of its checkpoints (RUN/checkpoints/step-N)"
        )
    guide_cfg = load_config(run_dir / CONFIG_FILE)
    d, g = cfg.diffusion, guide_cfg.diffusion
    same = {
        "data": (cfg.data.name, sample_shape(cfg.data))
        == (guide_cfg.data.name, sample_shape(guide_cfg.data)),
        "classes": cfg.model.num_classes == guide_cfg.model.num_classes,
        "diffusion": (d.schedule, d.T, d.zero_terminal_snr, d.prediction)
        == (g.schedule, g.T, g.zero_terminal_snr, g.prediction),
    }
    for what, ok in same.items():
        if not ok:
            raise RunError(
                f"--guide {path}: its {what} differ from the run's; a guide must denoise the same way"
            )
    model = make_model(guide_cfg, source=f"{run_dir}/{CONFIG_FILE}: ")
    weights = folder / "ema.safetensors"
    ckpt.load_into(model, ckpt.load_tensors(weights), weights)
    dev = resolve_device(device or cfg.train.device)
    return model.to(dev).eval(), folder, int(ckpt.load_state(folder)["step"])


def own_guide_step(cfg: Config) -> int | None:
    """The step of the run's own guide for autoguidance: the fraction ``sample.guide_at`` of
    ``train.max_steps``, at least step 1 (None: the run has none). Training keeps its checkpoint."""
    if cfg.sample.guide_at is None:
        return None
    return ckpt.step_at(cfg.sample.guide_at, cfg.train.max_steps)


@dataclass
class Guidance:
    """How a sampling call is guided: the weight w (None or 0: not at all), for autoguidance the weaker
    network, the folder it came from and the step of its weights, and the noise levels (σ_lo, σ_hi] where
    guidance acts (None: every step)."""

    weight: float | None = None
    guide: nn.Module | None = None
    folder: Path | None = None
    step: int | None = None
    interval: tuple[float, float] | None = None


def guidance_of(
    run_dir: Path,
    cfg: Config,
    guidance: float | None,
    guide: Path | None = None,
    device: str | None = None,
    interval: tuple[float, float] | None = None,
) -> Guidance:
    """The guidance a sampling call of the run gets: what the call gives, else what the run's config says.

    ``guide`` given: autoguidance by that folder (a run, or one of its checkpoints) with weight
    ``guidance``. Otherwise an unconditional run whose config names its own guide (``sample.guide_at``:
    :func:`own_guide_step`) is autoguided by that checkpoint, with weight ``guidance`` when given (0: none)
    or else ``sample.autoguidance``. Otherwise ``guidance`` is classifier-free guidance's weight, or else
    the run's ``sample.guidance`` (0: none). Guidance acts at the noise levels ``interval`` = (σ_lo, σ_hi],
    or else the run's ``sample.guidance_interval``, or else at every step."""
    step = own_guide_step(cfg)
    if guide is None and step is not None and cfg.model.num_classes is None:
        w = cfg.sample.autoguidance if guidance is None else guidance
        if not w:
            return Guidance(None)  # --guidance 0: the run's own guide is off
        guide = ckpt.checkpoint_dir(run_dir) / ckpt.step_name(step)
        if not (guide / "ema.safetensors").is_file():
            raise RunError(
                f"{run_dir}: its guide, the checkpoint of step {step} (sample.guide_at "
                f"{cfg.sample.guide_at:g} of {cfg.train.max_steps} steps), is missing; --guidance 0 samples "
                "without it"
            )
        guidance = w
    elif guide is None and guidance is None and cfg.sample.guidance:
        guidance = cfg.sample.guidance  # the conditional run's own classifier-free guidance
    if interval is None and guidance and cfg.sample.guidance_interval is not None:
        interval = tuple(cfg.sample.guidance_interval)
    if guide is None:
        return Guidance(guidance, interval=interval)
    if guidance is None:
        raise RunError("--guide needs --guidance, the weight w of the autoguidance")
    return Guidance(guidance, *_guide_network(Path(guide), cfg, device), interval=interval)
