"""Time embeddings shared by every denoiser.

Models know nothing of diffusion: they receive a timestep as a number (a float tensor of shape ``(B,)``)
and embed it like a position in a sequence.
"""

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalar positions (Vaswani et al. 2017, sec. 3.5; used by Ho et al. 2020).

    ``t`` has shape ``(B,)``; the result has shape ``(B, dim)``: ``dim // 2`` sines then cosines, at
    frequencies spaced geometrically from 1 down to ``1 / max_period``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalEmbedding(nn.Module):
    """``sinusoidal_embedding`` as a module, so it can sit in an ``nn.Sequential``."""

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        self.dim = dim
        self.max_period = max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(t, self.dim, self.max_period)
