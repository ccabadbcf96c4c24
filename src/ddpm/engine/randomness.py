"""Seeded randomness that needs no state to checkpoint: the data order is a function of (seed, epoch) and
every random draw of a step a function of (seed, step), so a resumed run continues exactly where it stopped.

Under torchrun each process takes its own slice of every global batch and of its random draws, so that
N processes with batch b train exactly as one process with batch N·b.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch


def derived_seed(*parts: str | int) -> int:
    """A 63-bit seed that is a function of ``parts`` (a purpose, the seed, a step, …) and nothing else."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


@dataclass
class BatchOrder:
    """A seeded, reproducible order over ``n`` items: epoch e visits ``randperm(n)`` seeded by (seed, e).

    ``rank`` of ``world`` takes its own slice of each global batch, so all processes together see exactly
    the batches a single process with ``world ×`` the batch size would see.
    """

    n: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    epoch: int = 0
    position: int = 0  # index into the current epoch's permutation

    def __post_init__(self):
        self._perm_epoch = None

    def _perm(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order, self._perm_epoch = torch.randperm(self.n, generator=g), self.epoch
        return self._order

    def next(self) -> torch.Tensor:
        global_batch = self.batch_size * self.world
        if global_batch > self.n:
            raise ValueError(f"the batch ({global_batch}) is larger than the data set ({self.n} items)")
        if self.position + global_batch > self.n:  # drop the incomplete tail: every batch is full
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position + self.rank * self.batch_size
        idx = self._perm()[start : start + self.batch_size]
        self.position += global_batch
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


@dataclass
class BatchDraws:
    """The random numbers of one micro-batch, drawn for the whole global batch, of which ``rank`` keeps its
    rows (the rows ``BatchOrder`` gave it).

    Every process seeds the same ``generator`` the same way, so a sample's noise depends on its place in the
    global batch alone: ``world`` processes with batch b draw exactly what one process with batch world·b
    draws. Shapes are per process (``(b, …)``); the cost is drawing world × the numbers, small beside the
    network.
    """

    generator: torch.Generator
    rank: int = 0
    world: int = 1

    def _mine(self, draw: Callable[..., torch.Tensor], shape: tuple[int, ...], **kwargs) -> torch.Tensor:
        b = shape[0]
        full = draw(
            (b * self.world, *shape[1:]), generator=self.generator, device=self.generator.device, **kwargs
        )
        return full[self.rank * b : (self.rank + 1) * b]

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._mine(torch.randn, tuple(shape), dtype=dtype)

    def rand(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._mine(torch.rand, tuple(shape))

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self._mine(lambda size, **kw: torch.randint(high, size, **kw), tuple(shape))
