"""Train a run: prepare its folder, hand the engine the diffusion loss, and write what the run learned.

The engine (:mod:`ddpm.engine.trainer`) knows nothing of diffusion; this module gives it the training loss
of Ho et al. 2020 (:func:`make_loss_fn`) and, at the end, samples and measures the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
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
from ddpm.fileio import atomic_write_text, check_writable
from ddpm.metrics.points import points_report
from ddpm.models import count_parameters
from ddpm.run import (
    CONFIG_FILE,
    RunError,
    build_schedule,
    check_config,
    is_export,
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
    if d.noise_levels != "uniform":
        p_t = diffusion.noise_level_probabilities(schedule, d.noise_levels, d.lognormal_mean, d.lognormal_std)

    def loss_fn(model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None, draws: BatchDraws):
        b = x0.shape[0]
        if d.noise_levels == "uniform":
            t = draws.randint(schedule.T, (b,))
        else:
            t = diffusion.draw_timesteps(draws.rand((b,)), p_t)
        noise = draws.randn(x0.shape, dtype=x0.dtype)
        if y is not None and num_classes and d.p_uncond > 0:
            # Classifier-free guidance (Ho & Salimans 2022): drop labels to the "no label" index.
            drop = draws.rand((b,)) < d.p_uncond
            y = torch.where(drop, torch.full_like(y, num_classes), y)
        return diffusion.training_loss(
            lambda x_t, tt: model(x_t, tt, y), x0, t, noise, schedule, d.prediction, d.min_snr_gamma
        )

    return loss_fn


# --- The run folder ------------------------------------------------------------------------------------

MARKER = ".ddpm-run"  # written beside the first config.json: this folder is a ddpm run
LOCK = ".ddpm-lock"  # flocked by the one process writing the run; holds its PID while it does
# The only settings a resumed run takes from the command: how long it trains, and whether its horizon is
# fitted to the time
BUDGETS = ("train.max_steps", "train.max_minutes", "train.fit_horizon")

# Everything ``ddpm train`` writes in a run besides config.json and the two files above, as regular
# expressions of paths relative to the run: what --restart removes (and a start with no checkpoint to go
# on from, whose leftovers belong to no checkpoint). Nothing else in the folder is ever removed.
RUN_OUTPUTS = (
    r"checkpoints/step-\d+",  # the checkpoints (ddpm.engine.checkpoint)
    r"checkpoints/\.tmp-step-\d+-\d+",  # one a killed process was writing
    r"posthoc-ema/step-\d+",  # snapshots of the power EMAs (ddpm.engine.posthoc_ema)
    r"posthoc-ema/\.tmp-step-\d+-\d+",
    r"metrics\.csv",
    r"metrics\.json",
    r"loss\.png",
    r"samples/step-\d+\.png",
    r"tensorboard/events\.out\.tfevents\..+",
    r"\.(config|metrics)\.json\.tmp-\d+\.json",  # an atomic write cut short (ddpm.fileio.atomic_path)
)


def _is_run(out: Path) -> bool:
    """Whether ``out`` is a ddpm run: it has the marker, or (runs older than the marker) a config.json that
    loads as a ddpm config and at least one checkpoint."""
    if (out / MARKER).is_file():
        return True
    if not ckpt.list_checkpoints(out) or not (out / CONFIG_FILE).is_file():
        return False
    try:
        Config.load(out / CONFIG_FILE)
    except (ValueError, OSError):
        return False
    return True


def mark_run(out: Path) -> None:
    """Write the marker that makes ``out`` a ddpm run (beside its first config.json)."""
    if not (out / MARKER).is_file():
        atomic_write_text(out / MARKER, "a ddpm run: ddpm train --restart removes only what ddpm wrote\n")


def prepare_out(out: Path) -> None:
    """Check ``--out`` before anything is written, and create it: a new or empty folder, or a ddpm run;
    never a file, nor a folder holding anything else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file, not a run folder")
    if out.is_dir() and not _is_run(out):
        # the lock, and the write probe of earlier versions: left by a failed start
        found = sorted(p.name for p in out.iterdir() if p.name not in (LOCK, ".write-test"))
        if found:
            raise RunError(
                f"--out {out}: not a ddpm run and not empty (it holds {_first_few(found)}); "
                "choose a new or empty folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        check_writable(out)
    except OSError as e:
        raise RunError(f"--out {out}: cannot write there ({e.strerror})") from None


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold the run in ``out`` for writing: one writer per run.

    An exclusive ``flock`` on ``RUN/.ddpm-lock``, which holds the writer's PID while it writes. The kernel
    releases the lock when the process ends, however it ends (SIGKILL too), so it is never left stale;
    readers (sample, eval, info) take none.
    """
    path = Path(out) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a planted link is never followed
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"--out {out}: {_holder(fd)} is training this run; wait for it to end, or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody to name once we are done
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """The process holding the lock, as its lock file names it (it writes its PID just after locking)."""
    for _ in range(20):
        words = os.pread(fd, 256, 0).decode(errors="replace").split()
        if words:
            break
        time.sleep(0.05)
    else:
        return "another process"
    pid, host = words[0], words[1] if len(words) > 1 else ""
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"another ddpm train (PID {pid}{where})"


def remove_outputs(out: Path) -> list[Path]:
    """Remove what an earlier start of the run in ``out`` wrote (:data:`RUN_OUTPUTS`), and the folders
    that leaves empty; returns what was removed. The config is replaced by the caller."""
    patterns = [re.compile(p) for p in RUN_OUTPUTS]
    folders = {Path(p).parent for p in RUN_OUTPUTS}
    removed = [
        path
        for folder in sorted(folders)
        if (out / folder).is_dir()
        for path in sorted((out / folder).iterdir())
        if any(p.fullmatch(path.relative_to(out).as_posix()) for p in patterns)
    ]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for folder in folders - {Path(".")}:
        with contextlib.suppress(OSError):  # not empty: it holds something of someone else's
            (out / folder).rmdir()
    return removed


def _first_few(names: list[str]) -> str:
    """The first three names, and how many more."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def config_differences(saved: Config, cfg: Config) -> list[str]:
    """The settings (dotted keys) in which ``cfg`` differs from a run's ``saved`` config, budgets aside."""
    a, b = _flat(saved.to_dict()), _flat(cfg.to_dict())
    missing = object()
    keys = [k for k in dict.fromkeys([*a, *b]) if k not in BUDGETS and a.get(k, missing) != b.get(k, missing)]
    return sorted(keys, key=lambda k: k not in ("preset", "seed"))  # the telling ones first


def _flat(d: dict, prefix: str = "") -> dict:
    d = json.loads(json.dumps(d))  # as config.json holds it: tuples are lists
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def open_run(cfg: Config, out: Path, restart: bool, held: contextlib.ExitStack) -> tuple[Config, Path | None]:
    """Take the run folder ``out`` for writing (the lock is held by ``held``) and find the checkpoint to go
    on from: the latest, unless ``restart``.

    A run resumes only with the config it was started with (budgets aside): another one is refused,
    naming the settings that differ, never silently replaced by the saved one.
    """
    out = Path(out)
    if is_export(out):  # --restart too: it would remove the only weights the folder has
        raise RunError(
            f"--out {out}: is an exported run (ddpm export), whose EMA weights alone cannot be trained on; "
            f"to train its recipe anew: ddpm train {out / CONFIG_FILE} --out NEW_RUN"
        )
    prepare_out(out)
    held.enter_context(writer_lock(out))
    latest = None if restart else ckpt.latest_checkpoint(out)
    if latest is not None and (out / CONFIG_FILE).exists():
        differ = config_differences(load_config(out / CONFIG_FILE), cfg)
        if differ:
            raise RunError(
                f"--out {out}: the run was started with another config (it differs in {_first_few(differ)}); "
                f"to resume it as it was: ddpm train {out / CONFIG_FILE} --out {out}; "
                "to start over: --restart"
            )
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

    An existing run folder is resumed from its latest checkpoint; only the budgets (``max_steps``,
    ``max_minutes``) may differ from the config it was started with. ``restart`` starts it over: what it
    wrote (:data:`RUN_OUTPUTS`) is removed only once the config, data and model are known to work. Under
    torchrun every process calls this and trains its share of each global batch: rank 0 takes the folder
    while the others wait, writes everything and returns the metrics; the other ranks return None.
    """
    out = Path(out)
    check_config(cfg)  # it builds the model on torch's meta device: one it cannot build is refused here,
    resolve_device(cfg.train.device)  # as is a device this machine lacks, before the folder is touched
    with contextlib.ExitStack() as held:  # rank 0's lock on the run, until its last file is written
        with distributed.process_group() as group:
            if group.rank:
                log = _quiet  # one voice per job
            cfg, latest = distributed.from_rank_zero(lambda: open_run(cfg, out, restart, held))

            def setup() -> tuple[Dataset, Schedule, Trainer]:
                data = load_dataset(cfg.data)
                classes = cfg.model.num_classes
                if classes and data.num_classes != classes:
                    have = f"{data.num_classes} classes" if data.num_classes else "no labels"
                    raise RunError(
                        f"the model is conditional on {classes} classes but the data set has {have}"
                    )
                schedule = build_schedule(cfg).to(resolve_device(cfg.train.device))
                torch.manual_seed(cfg.seed)  # the initial weights are part of what a seed reproduces
                model = make_model(cfg)
                log(f"model {cfg.model.name}: {count_parameters(model):,} parameters")

                def on_sample(ema_model: nn.Module, step: int) -> None:
                    x = sample(cfg, ema_model, schedule, cfg.train.sample_n, seed=0)
                    _save_samples(out, data, x, step)

                loss_fn = make_loss_fn(cfg, schedule, data.num_classes)
                trainer = Trainer(
                    model,
                    loss_fn,
                    data.x,
                    data.y,
                    cfg.train,
                    out,
                    cfg.seed,
                    on_sample,
                    *group,
                    log=log,
                    keep_at=[] if cfg.sample.guide_at is None else [cfg.sample.guide_at],  # autoguidance's
                    on_horizon=lambda max_steps: cfg.save(out / CONFIG_FILE),  # train.fit_horizon's fit
                )
                if latest is not None:
                    trainer.resume(latest)
                    log(f"resumed from {latest.name} (step {trainer.step})")
                if group.rank == 0:  # only once data, model and checkpoint are known to fit together
                    if latest is None:  # --restart, or a start that never reached a checkpoint
                        remove_outputs(out)
                    mark_run(out)
                    cfg.save(out / CONFIG_FILE)
                return data, schedule, trainer

            data, schedule, trainer = distributed.on_every_rank(setup)
            summary = trainer.fit()
        if group.rank:
            return None
        return _finish(cfg, out, data, schedule, trainer, summary, log)


def _finish(cfg: Config, out: Path, data: Dataset, schedule: Schedule, trainer: Trainer, summary: dict, log):
    """Rank 0's last files: the final samples, the loss curve and ``metrics.json``; returns the metrics."""
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
    if trainer.step < cfg.train.max_steps and cfg.train.max_minutes:  # fit stops early for time alone
        log(
            f"stopped at step {trainer.step} of {cfg.train.max_steps}: the time budget (--max-minutes "
            f"{cfg.train.max_minutes:g}) is spent; run the same command again to continue"
        )
    return metrics


def _quiet(*args) -> None:
    pass
