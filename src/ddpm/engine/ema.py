"""Exponential moving average of the weights, used for sampling (Ho et al. 2020, appendix B)."""

import copy

import torch
from torch import nn


class EMA:
    """θ_ema ← d θ_ema + (1 − d) θ, with the warm-up d_k = min(decay, (1 + k) / (10 + k)) when asked.

    The warm-up keeps early averages from being dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)
