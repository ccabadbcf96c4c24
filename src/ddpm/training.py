"""Train a run: prepare its folder, hand the engine the diffusion loss, and write what the run learned.

The engine (:mod:`ddpm.engine.trainer`) knows nothing of diffusion; this module gives it the training loss
of Ho et al. 2020 (:func:`make_loss_fn`) and, at the end, samples and measures the run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from ddpm import diffusion, plotting
from ddpm.config import Config
from ddpm.data import Dataset, load_dataset
from ddpm.engine import checkpoint as ckpt
from ddpm.engine import distributed
from ddpm.engine.device import resolve_device
from ddpm.engine.randomness import BatchDraws
from ddpm.engine.trainer import Trainer
from ddpm.fileio import atomic_write_text
from ddpm.metrics.points import points_report
from ddpm.models import count_parameters
from ddpm.run import (
    CONFIG_FILE,
    RunError,
    build_schedule,
    check_config,
    load_config,
    make_model,
    sample,
    sample_steps,
)
from ddpm.schedules import Schedule


def make_loss_fn(cfg: Config, schedule: Schedule, num_classes: int | None):
    """The diffusion training loss as the engine wants it: ``loss_fn(model, x0, y, draws)``.

    Timesteps, noise and label drops come from ``draws`` (:class:`~ddpm.engine.randomness.BatchDraws`), so
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
        saved = load_config(out / CONFIG_FILE)
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
    check_config(cfg)
    with distributed.process_group() as group:
        if group.rank:
            log = _quiet  # one voice per job
        cfg, latest = distributed.from_rank_zero(lambda: open_run(cfg, out, restart, log))

        def setup() -> tuple[Dataset, Schedule, Trainer]:
            data = load_dataset(cfg.data)
            classes = cfg.model.num_classes
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
    metrics["sample_steps"] = sample_steps(cfg)
    if not data.is_image and data.y is None and cfg.sample.eval_n:  # labelled 2-D sets: notebook 3.1
        metrics.update(points_report(cfg, ema, schedule, x[: cfg.sample.eval_n]))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _quiet(*args) -> None:
    pass
