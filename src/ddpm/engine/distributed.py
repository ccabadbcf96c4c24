"""Data-parallel training under torchrun: one process per device, gloo on CPU, NCCL on CUDA.

torchrun starts the processes and tells each its place through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, and the rendezvous address); outside torchrun there is one process of rank 0 and every
helper here does its work locally without touching ``torch.distributed``.

Two rules keep a job from hanging. Every collective has a timeout (:data:`TIMEOUT`). And work that can fail
on one process alone (the run folder, data, a checkpoint write) goes through :func:`on_every_rank` or
:func:`from_rank_zero`, which hand its failure to every process, so that no process is left waiting in a
collective for one that has quit: each ends with one line saying which rank failed and why.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Rank 0 may keep the others waiting while it draws a periodic sample grid (a minute or more for a large
# UNet on a CPU); beyond this, a collective is taken to be stuck and the job fails rather than hangs.
TIMEOUT = datetime.timedelta(minutes=10)


class PeerFailed(RuntimeError):
    """Another process of the job failed; the message names its rank and repeats its error."""


class Group(NamedTuple):
    rank: int
    world: int


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def process_group() -> Iterator[Group]:
    """Join torchrun's process group for the duration of the block (a single process outside torchrun).

    torch's default backends serve both devices: gloo for CPU tensors, NCCL for CUDA tensors when there is
    CUDA; each process takes the GPU of its ``LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield Group(0, 1)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)  # "cuda" (the run's device) now means this process's GPU
    dist.init_process_group(timeout=TIMEOUT)
    try:
        yield Group(dist.get_rank(), dist.get_world_size())
        # Every rank got here: leave together, so that no process tears its connections down (and exits)
        # while a peer still uses them (under load gloo then aborted a finished rank at exit).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()
    return text[0] if text and text[0] else type(error).__name__


def raise_any(error: Exception | None) -> None:
    """Raise on every process if any has failed (a collective): this process's own ``error``, else a
    :class:`PeerFailed` naming the first rank that failed, with its message."""
    failures: list[str | None] = []
    if is_distributed():
        failures = [None] * dist.get_world_size()
        dist.all_gather_object(failures, None if error is None else _one_line(error))
    if error is not None:
        raise error
    for rank, message in enumerate(failures):
        if message is not None:
            raise PeerFailed(f"rank {rank} failed: {message}")


def on_every_rank(fn: Callable[[], T]) -> T:
    """``fn()`` on every process; if it fails on any, every process raises (:func:`raise_any`). For
    set-up work that involves no collective: reading data, building the model, loading a checkpoint."""
    result, error = None, None
    try:
        result = fn()
    except Exception as e:
        error = e
    raise_any(error)
    return result


def from_rank_zero(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone, its result (or its failure) handed to every process once it is done.

    For what must happen once while the others wait: checking and creating the run folder, writing the
    final checkpoint (so that every rank returns only once it is on disk).
    """
    if not is_distributed():
        return fn()
    result, error = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as e:
            error = e
    box = [result, None if error is None else _one_line(error)]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[1] is not None:
        raise PeerFailed(f"rank 0 failed: {box[1]}")
    return box[0]


def max_over_ranks(value: int) -> int:
    """The largest ``value`` any process holds: how the ranks agree on a decision (stop for the time
    budget, a signal, an error) that any one of them may reach first. On the CPU (gloo) even when training
    on GPUs, so that agreeing every step costs no GPU synchronisation."""
    if not is_distributed():
        return value
    t = torch.tensor(value, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all processes (for logging the loss of the whole global batch)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)  # gloo has no AVG: sum, then divide
    return t / dist.get_world_size()
