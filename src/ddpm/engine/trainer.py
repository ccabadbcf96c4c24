"""The training loop: one loop for 2-D points and images alike.

The trainer is handed a model, a ``loss_fn(model, x, y, draws) -> per-sample loss`` and the data as
tensors; it owns the optimiser, the learning-rate schedule, the EMA, mixed precision, budgets, logging and
checkpoints, and, when ``posthoc_ema`` asks for them, the power-function EMAs of post-hoc EMA and their
snapshots (:mod:`ddpm.engine.posthoc_ema`). Its randomness is seeded by (seed, step)
(:mod:`ddpm.engine.randomness`), so a resumed run continues exactly where it stopped, with no random state
to checkpoint.

Under torchrun (``rank`` of ``world`` processes, :mod:`ddpm.engine.distributed`) each process trains on its
slice of every global batch with DistributedDataParallel; rank 0 alone keeps the EMAs and writes logs,
samples, snapshots and checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import math
import signal
import time
from collections.abc import Callable, Collection
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ddpm.config import TrainConfig
from ddpm.engine import checkpoint as ckpt
from ddpm.engine import distributed, posthoc_ema
from ddpm.engine.device import resolve_device, resolve_precision
from ddpm.engine.ema import EMA
from ddpm.engine.randomness import BatchDraws, BatchOrder, derived_seed
from ddpm.progress import progress_bar


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr × min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


# train.fit_horizon: the steps and the share of the budget an invocation times (after its first step, which
# pays for warming up) before max_steps is fitted to the rest of the budget, whichever comes later (the next
# few steps still run slower than the rest: a longer window on a long budget dilutes them), and the share of
# that rest the fitted steps may take (checkpoints and sample grids on the way take the remainder).
FIT_AFTER_STEPS = 20
FIT_AFTER_SHARE = 0.01
FIT_MARGIN = 0.97


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor | None, BatchDraws], torch.Tensor]


# The columns of RUN/metrics.csv, one row per log line.
METRICS_COLUMNS = ("step", "loss", "lr", "images_per_s", "train_seconds")

# Divergence before NaN: a log line whose mean loss is above DIVERGED_FACTOR × the lowest per-step loss of
# this run, DIVERGED_LINES times in a row, stops training as a non-finite loss does; no periodic checkpoint
# is written while the loss is that far above its best, so the last one kept is from before.
DIVERGED_FACTOR = 100.0
DIVERGED_LINES = 3


class Stop(enum.IntEnum):
    """Why training stops before ``max_steps``; the ranks take the largest any of them reports."""

    NO = 0
    TIME = 1  # the max_minutes budget
    SIGNAL = 2  # Ctrl-C or SIGTERM
    ERROR = 3  # an error in rank-local work (logging, checkpoint, samples)


class Diverged(FloatingPointError):
    """Training produced a non-finite loss or weights; the message names the step and the checkpoint kept."""


class Trainer:
    """Trains ``model`` on ``(x, y)`` with ``loss_fn``, writing everything under ``run_dir``."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        x: torch.Tensor,
        y: torch.Tensor | None,
        cfg: TrainConfig,
        run_dir: Path,
        seed: int = 0,
        on_sample: Callable[[nn.Module, int], None] | None = None,
        rank: int = 0,
        world: int = 1,
        log: Callable[[str], None] = print,
        keep_at: Collection[float] = (),
        on_horizon: Callable[[int], None] | None = None,
    ):
        self.cfg, self.run_dir, self.seed = cfg, Path(run_dir), seed
        # fractions of max_steps whose checkpoints are written and never pruned (they follow a fitted horizon)
        self.keep_at = tuple(keep_at)
        self.on_horizon = on_horizon  # told max_steps when train.fit_horizon changes it (rank 0)
        self.rank, self.world, self.log = rank, world, log
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.memory_format = (
            torch.channels_last if cfg.channels_last and x.ndim == 4 else torch.contiguous_format
        )
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.net: nn.Module = self.model  # what the loss calls: the model, or its DDP wrapper (fit)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup) if rank == 0 else None
        self.posthoc = None  # the power EMAs of post-hoc EMA, when asked for (rank 0)
        if cfg.posthoc_ema and rank == 0:
            self.posthoc = posthoc_ema.PowerEMA(self.model, cfg.posthoc_ema)
        self.optimizer = make_optimizer(self.model, cfg)
        self.loss_fn, self.on_sample = loss_fn, on_sample
        self.x = x.to(self.device)
        self.y = None if y is None else y.to(self.device)
        self.order = BatchOrder(len(x), cfg.batch_size, seed, rank, world)
        self.generator = torch.Generator(self.device)  # re-seeded for every micro-batch (train_step)
        self.step, self.train_seconds, self.images_seen = 0, 0.0, 0
        self.metrics_path = self.run_dir / "metrics.csv"
        self.tensorboard = None  # opened by fit: a run that fails to resume leaves its folder as it was
        self._signalled = False
        self.best_loss, self.lines_above = math.inf, 0  # the divergence rule (DIVERGED_FACTOR)

    # --- state -------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def save(self) -> Path:
        """Write a checkpoint of this process's state (rank 0's job: the ranks hold the same weights); never
        one of weights that are no longer finite (:meth:`_check_finite`)."""
        self._check_finite()
        opt_tensors, opt_meta = ckpt.optimizer_to_tensors(self.optimizer)
        state = {
            "step": self.step,
            "order": self.order.state(),
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "world_size": self.world,
            "optimizer": opt_meta,
        }
        tensors = {
            "model": self.model.state_dict(),  # the bare module's names: no DDP "module." prefix
            "ema": self.ema.model.state_dict(),
            "optimizer": {f"optim.{k}": v for k, v in opt_tensors.items()},
        }
        if self.posthoc is not None:  # the running power EMAs, so that a resumed run continues them
            state["posthoc_ema"] = list(self.posthoc.sigma_rels)
            tensors.update(self.posthoc.tensors())
        keep = self.cfg.keep_checkpoints
        return ckpt.save_checkpoint(
            self.run_dir, self.step, tensors, state, keep=keep, keep_steps=self.keep_steps()
        )

    def keep_steps(self) -> frozenset[int]:
        """The steps of ``keep_at`` on the present horizon."""
        return frozenset(ckpt.step_at(f, self.cfg.max_steps) for f in self.keep_at)

    def _check_finite(self) -> None:
        """Refuse to write weights that are no longer finite: the loss diverged since the last log line, and
        the last good checkpoint is what a user will want to resume from."""
        emas = [self.ema.model] + (self.posthoc.models if self.posthoc is not None else [])
        if not all(map(finite, [self.model, *emas])):
            raise self._diverged(f"the weights are no longer finite at step {self.step} (the loss diverged)")

    def save_snapshot(self) -> Path:
        """Write a snapshot of the power EMAs for post-hoc EMA (rank 0's job)."""
        self._check_finite()
        return posthoc_ema.save_snapshot(self.run_dir, self.step, self.posthoc)

    def resume(self, path: Path) -> None:
        """Restore model, EMA, optimiser and data position from a checkpoint folder.

        Every rank loads the same checkpoint. One written by another number of processes resumes too: the
        step, the learning-rate schedule and the position in the epoch's global order carry over, and the
        global batch becomes ``batch_size × world × grad_accum`` of this job from here on.
        """
        state = ckpt.load_state(path)
        ckpt.load_into(
            self.model, ckpt.load_tensors(path / "model.safetensors", self.device), path / "model.safetensors"
        )
        if self.ema is not None:
            ema_path = path / "ema.safetensors"
            ckpt.load_into(self.ema.model, ckpt.load_tensors(ema_path, self.device), ema_path)
        if self.posthoc is not None:
            self._resume_posthoc(path, state)
        extra = ckpt.load_tensors(path / "optimizer.safetensors")
        opt = {k[len("optim.") :]: v.to(self.device) for k, v in extra.items() if k.startswith("optim.")}
        try:
            ckpt.optimizer_from_tensors(self.optimizer, opt, state["optimizer"])
            self.step, self.train_seconds = state["step"], state["train_seconds"]
            self.images_seen = state.get("images_seen", 0)
            self.order.epoch, self.order.position = state["order"]["epoch"], state["order"]["position"]
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(
                f"{path}: its optimiser or state does not fit this run ({e})"
            ) from None
        saved_world = state.get("world_size", 1)
        if saved_world != self.world:
            global_batch = self.cfg.batch_size * self.world * self.cfg.grad_accum
            self.log(
                f"{path.name} was written by {saved_world} process(es), this job has {self.world}: "
                f"the global batch is {global_batch} from step {self.step} on"
            )
        self._truncate_metrics()
        if self.posthoc is not None:
            posthoc_ema.remove_snapshots_after(self.run_dir, self.step)

    def _resume_posthoc(self, path: Path, state: dict) -> None:
        """Load the running power EMAs; a checkpoint that kept others (or none) cannot continue them."""
        kept = state.get("posthoc_ema")
        if kept != list(self.posthoc.sigma_rels):
            had = f"kept power EMAs of σ_rel {kept}" if kept else "kept no power EMAs"
            raise ckpt.CheckpointError(
                f"{path}: {had}, but the config asks for train.posthoc_ema {list(self.posthoc.sigma_rels)};"
                " a post-hoc EMA cannot start mid-run (to start over: --restart)"
            )
        for name, ema in zip(self.posthoc.tensors(), self.posthoc.models):
            file = path / f"{name}.safetensors"
            ckpt.load_into(ema, ckpt.load_tensors(file, self.device), file)

    def _truncate_metrics(self) -> None:
        """Drop log rows written after the checkpoint we resume from: those steps are redone."""
        if self.rank or not self.metrics_path.exists():
            return
        with open(self.metrics_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:  # created, then killed before its first line: it is written again from the top
            self.metrics_path.unlink()
            return
        if rows[0] != list(METRICS_COLUMNS):
            raise ValueError(
                f"{self.metrics_path}: not this run's log (its columns are {', '.join(rows[0])}); "
                "move it away and run again"
            )
        # A process killed mid-write can leave a partial last row: keep only complete rows up to our step.
        kept = rows[:1] + [
            r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= self.step
        ]
        with open(self.metrics_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    # --- the loop ----------------------------------------------------------------------------------------

    def train_step(self) -> torch.Tensor:
        """One optimiser step over ``grad_accum`` micro-batches; returns this process's mean loss (a tensor).

        Micro-batch i of step s draws its timesteps and noise from a generator seeded by (seed, s, i), the
        same on every rank (:class:`BatchDraws`); the global RNG (dropout) is seeded by (seed, s, rank), so
        that the ranks drop different units. Under DDP the gradients are averaged over the ranks once, in
        the backward pass of the last micro-batch.
        """
        cfg = self.cfg
        torch.manual_seed(derived_seed("dropout", self.seed, self.step, self.rank))
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        total = torch.zeros((), device=self.device)
        for i in range(cfg.grad_accum):
            idx = self.order.next().to(self.device)
            x = self.x[idx].contiguous(memory_format=self.memory_format)
            y = None if self.y is None else self.y[idx]
            self.generator.manual_seed(derived_seed("noise", self.seed, self.step, i))
            draws = BatchDraws(self.generator, self.rank, self.world)
            last = i == cfg.grad_accum - 1
            with contextlib.nullcontext() if last or self.net is self.model else self.net.no_sync():
                with self._autocast():
                    loss = self.loss_fn(self.net, x, y, draws).mean()
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        if self.posthoc is not None:
            self.posthoc.update(self.model, self.step + 1)  # t counts the optimiser steps taken, from 1
        self.step += 1
        self.images_seen += cfg.batch_size * cfg.grad_accum * self.world
        return total

    def _log_row(self, row: dict) -> None:
        if self.rank:
            return
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, float(value), int(row["step"]))
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)

    @contextlib.contextmanager
    def _signals_stop_training(self):
        """While training, Ctrl-C and SIGTERM ask to stop after the current step (with a checkpoint, once the
        ranks agree: :meth:`_stop_reason`); a second one stops at once."""

        def on_signal(signum, frame):
            if self._signalled:
                raise KeyboardInterrupt
            self._signalled = True

        self._signalled = False
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        with contextlib.suppress(ValueError):  # not the main thread: leave the handlers as they are
            for s in previous:
                signal.signal(s, on_signal)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                for s, handler in previous.items():
                    signal.signal(s, handler)

    def _stop_reason(self, start: float, error: Exception | None) -> Stop:
        """Whether to stop before the next step, agreed by all ranks (one small all-reduce under DDP)."""
        budget = self.cfg.max_minutes
        out_of_time = budget is not None and time.monotonic() - start >= budget * 60
        mine = (
            Stop.ERROR if error else Stop.SIGNAL if self._signalled else Stop.TIME if out_of_time else Stop.NO
        )
        return Stop(distributed.max_over_ranks(mine))

    def _timed_enough(self, timed_from: tuple[int, float]) -> bool:
        """Whether ``train.fit_horizon`` has timed enough: ``FIT_AFTER_STEPS`` steps and ``FIT_AFTER_SHARE``
        of the budget since ``timed_from``; all ranks agree (they fit at the same step)."""
        steps = self.step - timed_from[0] >= FIT_AFTER_STEPS
        seconds = time.monotonic() - timed_from[1] >= FIT_AFTER_SHARE * self.cfg.max_minutes * 60
        return distributed.max_over_ranks(int(steps and seconds)) == 1

    def _fit_horizon(self, bar, start: float, timed_from: tuple[int, float]) -> None:
        """``train.fit_horizon``: lower ``max_steps`` to the steps the rest of the ``max_minutes`` budget fits
        at the speed of the steps since ``timed_from`` (never raise it); all ranks take the smallest fit."""
        cfg = self.cfg
        now = time.monotonic()
        seconds_per_step = (now - timed_from[1]) / (self.step - timed_from[0])
        left = cfg.max_minutes * 60 - (now - start)
        fits = self.step + max(0, int(FIT_MARGIN * left / seconds_per_step))
        fits = -distributed.max_over_ranks(-fits)
        if fits >= cfg.max_steps:
            return
        cfg.max_steps = fits
        bar.total = fits
        bar.refresh()
        if self.rank == 0:
            bar.write(
                f"train.fit_horizon: {fits} steps fit the {cfg.max_minutes:g}-minute budget at "
                f"{1 / seconds_per_step:.2f} steps/s; the learning-rate schedule now ends at step {fits}"
            )
            if self.on_horizon is not None:
                self.on_horizon(fits)

    def _diverged(self, what: str) -> Diverged:
        """The error that stops a diverged run: what happened, the checkpoint kept, and how to go on."""
        return Diverged(
            f"{what}; training stopped and {ckpt.kept(self.run_dir, 'last good')} "
            f"(to go on from it, lower train.lr in {self.run_dir / 'config.json'} and run "
            f"ddpm train {self.run_dir / 'config.json'} --out {self.run_dir})"
        )

    def _log(self, bar, losses: list[torch.Tensor], seconds: float) -> None:
        """Log the mean loss of the last ``len(losses)`` steps over all ranks (the global batch's loss).

        The per-step losses stay on the device until now (no synchronisation per step); a non-finite one,
        or a loss far above its best (``DIVERGED_FACTOR``), stops training, naming its step, on every rank at
        once (they see the same global values).
        """
        cfg = self.cfg
        per_step = distributed.mean_over_ranks(torch.stack(losses)).cpu()
        bad = (~torch.isfinite(per_step)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise self._diverged(
                f"the loss became {per_step[i].item()} at step {self.step - len(losses) + i + 1}"
            )
        loss = per_step.mean().item()
        self.best_loss = min(self.best_loss, per_step.min().item())
        far_above = self.best_loss > 0 and loss > DIVERGED_FACTOR * self.best_loss
        self.lines_above = self.lines_above + 1 if far_above else 0
        ips = len(losses) * cfg.batch_size * cfg.grad_accum * self.world / seconds
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.0f}", refresh=False)
        self._log_row(
            {
                "step": self.step,
                "loss": f"{loss:.6f}",
                "lr": f"{lr_at(self.step - 1, cfg):.3e}",
                "images_per_s": f"{ips:.1f}",
                "train_seconds": f"{self.train_seconds:.1f}",
            }
        )
        if self.lines_above >= DIVERGED_LINES:
            raise self._diverged(
                f"the loss stayed above {DIVERGED_FACTOR:g} × its best ({self.best_loss:.3g}) for "
                f"{DIVERGED_LINES} log lines: {loss:.3g} at step {self.step}"
            )

    def fit(self) -> dict:
        """Train until ``max_steps`` or the ``max_minutes`` budget; checkpoint on the way and at the end.

        Under DDP the ranks decide together, before every step, whether to stop, so that none is left
        waiting in a collective: a rank out of time, signalled or failed stops them all at the same step.
        """
        cfg = self.cfg
        if self.world > 1 and self.net is self.model:
            self.net = DistributedDataParallel(self.model)  # also checks every rank holds the same shapes
        if self.rank == 0 and self.tensorboard is None:
            self.tensorboard = _tensorboard(self.run_dir / "tensorboard")
        start = last_ckpt = time.monotonic()
        bar = progress_bar(total=cfg.max_steps, initial=self.step, disable=self.rank != 0, desc="train")
        self.model.train()
        window: list[torch.Tensor] = []  # the losses of the steps since the last log line
        window_t = time.perf_counter()
        error: Exception | None = None
        timed_from = None  # (step, time) after this invocation's first step: the speed train.fit_horizon uses
        to_fit = cfg.fit_horizon
        with self._signals_stop_training():
            try:
                while True:
                    reason = self._stop_reason(start, error)
                    if reason or self.step >= cfg.max_steps:
                        break
                    t0 = time.perf_counter()
                    window.append(self.train_step())
                    self.train_seconds += time.perf_counter() - t0
                    bar.update(1)
                    if timed_from is None:  # the first step of this invocation is done
                        timed_from = (self.step, time.monotonic())
                    try:
                        if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                            self._log(bar, window, time.perf_counter() - window_t)
                            window, window_t = [], time.perf_counter()
                        # Before the checkpoint of the same step: a run resumed from that one redoes none
                        # of the steps that would write this snapshot.
                        snapshot_due = self.step % cfg.posthoc_every == 0 or self.step == cfg.max_steps
                        if self.posthoc is not None and snapshot_due:
                            self.save_snapshot()
                        if to_fit and self._timed_enough(timed_from):
                            self._fit_horizon(bar, start, timed_from)
                            to_fit = False
                        due = self.step % cfg.checkpoint_every == 0 or self.step in self.keep_steps()
                        if due or time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                            last_ckpt = time.monotonic()
                            if self.rank == 0 and not self.lines_above:  # never a diverging state
                                self.save()
                        if cfg.sample_every and self.step % cfg.sample_every == 0 and self.on_sample:
                            if self.rank == 0:
                                self.on_sample(self.ema.model, self.step)
                    except Exception as e:  # a full disk on rank 0, say: raised once all ranks agree to stop
                        error = e
            except KeyboardInterrupt:  # raised mid-step (a second signal): the ranks can no longer agree
                if self.world > 1:
                    raise
                reason = Stop.SIGNAL
            finally:
                bar.close()
                if self.tensorboard is not None:
                    self.tensorboard.flush()
        if reason == Stop.ERROR:
            distributed.raise_any(error)  # this rank's error, or the failed rank's message
        distributed.from_rank_zero(self.save)  # every rank returns once the checkpoint is on disk
        if reason == Stop.SIGNAL:
            raise KeyboardInterrupt
        return {"step": self.step, "train_seconds": self.train_seconds, "images_seen": self.images_seen}


def _tensorboard(log_dir: Path):
    """A TensorBoard writer when the ``tensorboard`` package is installed; metrics.csv is always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel where this torch supports it (faster on a CPU too)."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):  # older torch: fused AdamW is CUDA-only
        return torch.optim.AdamW(model.parameters(), **kwargs)


def finite(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer of ``model`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
