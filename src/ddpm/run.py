"""One run = one folder. Build a run from its config, train it, load it back, sample from it.

This is the glue between the layers (data, diffusion, models, engine, evaluation); the CLI and the
notebooks call these functions and hold no logic of their own.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddpm import diffusion, plotting
from ddpm.config import Config, ConfigError, validate
from ddpm.data import Dataset, load_dataset
from ddpm.engine import checkpoint as ckpt
from ddpm.engine import distributed
from ddpm.engine.trainer import BatchDraws, Trainer, load_into, resolve_device
from ddpm.fileio import atomic_write_text
from ddpm.models import build_model, count_parameters
from ddpm.progress import progress_bar
from ddpm.samplers import SAMPLERS, classifier_free_guidance, make_denoiser, make_timesteps, sampler_options
from ddpm.schedules import Schedule, make_schedule

CONFIG_FILE = "config.json"


class RunError(ValueError):
    """A run folder that cannot be used as asked; the message is one line."""


def build_schedule(cfg: Config) -> Schedule:
    d = cfg.diffusion
    return make_schedule(d.schedule, d.T, zero_terminal_snr=d.zero_terminal_snr)


def is_image(cfg: Config) -> bool:
    return cfg.model.name != "mlp"


def model_kwargs(cfg: Config) -> dict:
    """The model's constructor arguments: the config's, plus the channels of image data."""
    kwargs = dict(cfg.model.kwargs)
    if is_image(cfg):
        kwargs.setdefault("in_channels", cfg.data.channels)
    return kwargs


def make_model(cfg: Config, source: str = "") -> nn.Module:
    """The run's network, with a one-line error for constructor arguments it does not take."""
    try:
        return build_model(cfg.model.name, **model_kwargs(cfg))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}cannot build model {cfg.model.name!r}: {e}") from None


def data_shape(cfg: Config) -> tuple[int, ...]:
    """The shape of one sample: (2,) for points, (C, H, W) for images."""
    return (cfg.data.channels, cfg.data.image_size, cfg.data.image_size) if is_image(cfg) else (2,)


def make_loss_fn(cfg: Config, schedule: Schedule, num_classes: int | None):
    """The diffusion training loss as the engine wants it: ``loss_fn(model, x0, y, draws)``.

    Timesteps, noise and label drops come from ``draws`` (:class:`~ddpm.engine.trainer.BatchDraws`), so
    each sample's draws follow from its place in the global batch, however many processes share it.
    """
    d = cfg.diffusion

    def loss_fn(model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None, draws: BatchDraws):
        b = x0.shape[0]
        t = draws.randint(schedule.T, (b,))
        noise = draws.randn(x0.shape, dtype=x0.dtype)
        if y is not None and num_classes and d.p_uncond > 0:
            # Classifier-free guidance (Ho & Salimans 2022): drop labels to the "no label" index.
            drop = draws.rand((b,)) < d.p_uncond
            y = torch.where(drop, torch.full_like(y, num_classes), y)
        return diffusion.training_loss(
            lambda x_t, tt: model(x_t, tt, y), x0, t, noise, schedule, d.prediction, d.min_snr_gamma
        )

    return loss_fn


def prepare_out(out: Path, restart: bool) -> None:
    """Check ``--out`` before anything is written: a folder we can write, never an existing file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file, not a run folder")
    if restart and out.is_dir():
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        for name in ("metrics.csv", "metrics.json"):
            (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"--out {out}: cannot write there ({e.strerror})") from None


def open_run(cfg: Config, out: Path, restart: bool, log=print) -> tuple[Config, Path | None]:
    """Prepare ``out`` and find what to continue from: the checkpoint, and the config the run started with
    (only the budgets are taken from ``cfg``)."""
    prepare_out(out, restart)
    latest = ckpt.latest_checkpoint(out)
    if latest is not None and (out / CONFIG_FILE).exists():
        saved = Config.load(out / CONFIG_FILE)
        saved.train.max_steps, saved.train.max_minutes = cfg.train.max_steps, cfg.train.max_minutes
        if saved.to_dict() != cfg.to_dict():
            log(f"resuming {out}: using its saved config (only the step and time budgets are taken from now)")
        cfg = saved
    return cfg, latest


def _save_samples(out: Path, data: Dataset, x: torch.Tensor, step: int) -> None:
    path = out / "samples" / f"step-{step:08d}.png"
    path.parent.mkdir(exist_ok=True)
    if data.is_image:
        plotting.save_grid(path, x)
    else:
        plotting.save_scatter(path, x, data.x[:4000], f"step {step}")


def train(cfg: Config, out: Path, restart: bool = False, log=print) -> dict | None:
    """Train (or resume) the run in ``out``; write config, checkpoints, metrics and pictures.

    An existing run folder is resumed from its latest checkpoint with the config it was started with;
    only the budgets (``max_steps``, ``max_minutes``) may differ. Under torchrun every process calls this
    and trains its share of each global batch: rank 0 prepares the folder while the others wait, writes
    everything and returns the metrics; the other ranks return None.
    """
    out = Path(out)
    validate(cfg)
    with distributed.process_group() as group:
        if group.rank:
            log = _quiet  # one voice per job
        cfg, latest = distributed.from_rank_zero(lambda: open_run(cfg, out, restart, log))

        def setup() -> tuple[Dataset, Schedule, Trainer]:
            data = load_dataset(cfg.data)
            classes = cfg.model.kwargs.get("num_classes")
            if classes and data.num_classes != classes:
                have = f"{data.num_classes} classes" if data.num_classes else "no labels"
                raise RunError(f"the model is conditional on {classes} classes but the data set has {have}")
            schedule = build_schedule(cfg).to(resolve_device(cfg.train.device))
            torch.manual_seed(cfg.seed)  # the initial weights are part of what a seed reproduces
            model = make_model(cfg)
            log(f"model {cfg.model.name}: {count_parameters(model):,} parameters")

            def on_sample(ema_model: nn.Module, step: int) -> None:
                _save_samples(out, data, sample(cfg, ema_model, schedule, cfg.train.sample_n, seed=0), step)

            loss_fn = make_loss_fn(cfg, schedule, data.num_classes)
            trainer = Trainer(
                model, loss_fn, data.x, data.y, cfg.train, out, cfg.seed, on_sample, *group, log=log
            )
            if latest is not None:
                trainer.resume(latest)
                log(f"resumed from {latest.name} (step {trainer.step})")
            if group.rank == 0:  # only once data, model and checkpoint are known to fit together
                cfg.save(out / CONFIG_FILE)
            return data, schedule, trainer

        data, schedule, trainer = distributed.on_every_rank(setup)
        summary = trainer.fit()
    if group.rank:
        return None
    ema = trainer.ema.model
    # One final draw serves the picture, the sampling throughput and, for 2-D data, the metrics.
    n = cfg.train.sample_n if data.is_image else max(cfg.train.sample_n, cfg.sample.eval_n)
    t0 = time.perf_counter()
    x = sample(cfg, ema, schedule, n, seed=cfg.seed + 1)
    sample_seconds = time.perf_counter() - t0
    _save_samples(out, data, x[: cfg.train.sample_n], trainer.step)
    if (out / "metrics.csv").exists():
        plotting.loss_curve(out / "loss.png", out / "metrics.csv")
    metrics = {"step": trainer.step, "parameters": count_parameters(trainer.model), **summary}
    metrics["train_images_per_s"] = summary["images_seen"] / max(summary["train_seconds"], 1e-9)
    metrics["sample_images_per_s"] = n / sample_seconds  # at the run's number of sampling steps
    metrics["sample_steps"] = cfg.sample.steps or cfg.diffusion.T
    metrics.update(evaluate(cfg, ema, schedule, data, x[: cfg.sample.eval_n]))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _quiet(*args) -> None:
    pass


def evaluate(cfg: Config, model: nn.Module, schedule: Schedule, data: Dataset, samples: torch.Tensor) -> dict:
    """End-of-training metrics for 2-D sets: distance of ``samples`` to the curve, their energy distance with
    its floor, and the negative log-likelihood bound in bits per dimension on held-out points (Ho et al.
    2020, eq. 5)."""
    if data.is_image or data.y is not None or cfg.sample.eval_n == 0:
        return {}  # labelled sets (shapes3) are measured per class, in notebook 3.1
    from ddpm.evaluation.points import points_metrics

    metrics = points_metrics(samples.cpu(), cfg.data.name, seed=cfg.seed + 2)
    device = next(model.parameters()).device
    held_out = load_dataset(
        dataclasses.replace(cfg.data, n_samples=cfg.sample.eval_n, data_seed=cfg.seed + 3)
    ).x
    generator = torch.Generator(device).manual_seed(cfg.seed + 4)
    nll = diffusion.bits_per_dim(
        model,
        held_out.to(device),
        schedule,
        cfg.diffusion.prediction,
        cfg.diffusion.variance,
        discrete=False,
        generator=generator,
    )
    metrics["nll_bits_per_dim"] = nll["total"].mean().item()
    return metrics


def sample_timesteps(cfg: Config, schedule: Schedule) -> list[int] | None:
    """The run's sampling steps: all T (None) or ``sample.steps`` of them, spaced by ``sample.spacing``."""
    if not cfg.sample.steps or cfg.sample.steps == schedule.T:
        return None
    return make_timesteps(schedule, cfg.sample.steps, cfg.sample.spacing)


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
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``n`` samples with the run's sampler, in batches.

    ``label`` picks the class of conditional models: one int for all samples, or a tensor of ``n`` labels.
    ``guidance`` is the classifier-free guidance weight w (conditional models; 0 or None: none).
    """
    device = next(model.parameters()).device
    shape = (n, *data_shape(cfg))
    num_classes = cfg.model.kwargs.get("num_classes")
    if guidance and (num_classes is None or label is None):
        raise RunError("guidance needs a class-conditional model and labels to guide towards")
    labels = None
    if label is not None:
        labels = torch.as_tensor(label, dtype=torch.long, device=device).expand(n).contiguous()
    generator = torch.Generator(device).manual_seed(seed)
    sampler = SAMPLERS[cfg.sample.sampler]
    timesteps = sample_timesteps(cfg, schedule)
    options = sampler_options(cfg.sample.sampler, variance=cfg.diffusion.variance, eta=cfg.sample.eta)
    n_steps = len(timesteps) if timesteps is not None else schedule.T
    bar = progress_bar(
        total=n * n_steps, desc="sampling", unit="img-step", disable=not progress, unit_scale=True
    )
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = None if labels is None else labels[start : start + b]
        if guidance:
            model_fn = classifier_free_guidance(model, y, num_classes, guidance)
        else:
            model_fn = lambda x, t, y=y: model(x, t, y)  # noqa: E731
        denoise = make_denoiser(model_fn, schedule, cfg.diffusion.prediction, cfg.diffusion.clip_x0)

        def step_callback(i, t, x, x0, first=start == 0, b=b):
            bar.update(b)
            if callback is not None and first:
                callback(i, t, x, x0)

        x_T = torch.randn((b, *shape[1:]), generator=generator, device=device)
        chunks.append(
            sampler(
                denoise,
                x_T,
                schedule,
                timesteps,
                generator=generator,
                callback=step_callback,
                **options,
            )
        )
    bar.close()
    model.train(was_training)
    return torch.cat(chunks)


@dataclass
class LoadedRun:
    cfg: Config
    model: nn.Module
    schedule: Schedule
    step: int
    checkpoint: Path


def load_run(run_dir: Path, weights: str = "ema", device: str | None = None) -> LoadedRun:
    """Rebuild a run's model from its folder alone (config.json and the latest checkpoint)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    cfg = Config.load(run_dir / CONFIG_FILE)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise RunError(f"{run_dir}: has no checkpoint yet")
    dev = resolve_device(device or cfg.train.device)
    model = make_model(cfg, source=f"{run_dir}/{CONFIG_FILE}: ")
    path = latest / f"{weights}.safetensors"
    load_into(model, ckpt.load_tensors(path), path)
    state = ckpt.load_state(latest)
    return LoadedRun(cfg, model.to(dev).eval(), build_schedule(cfg).to(dev), state["step"], latest)
