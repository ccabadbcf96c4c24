"""A small denoiser for 2-D points: an MLP conditioned on the time step (and optionally a class)."""

import torch
from torch import nn

from ddpm.models.embeddings import SinusoidalEmbedding


class MLPDenoiser(nn.Module):
    """x_t (B, dim) and t (B,) → a vector of the same shape as x_t.

    Each hidden layer adds an embedding of t (sinusoidal → linear), as the series' ``ConditionalChain``
    does. With ``residual`` the hidden layers are pre-norm residual blocks, which train faster and deeper;
    without it the network is the series' plain chain (``hidden=32, layers=3``: about 5k parameters).
    ``num_classes`` adds a label embedding with one extra "no label" index for classifier-free guidance.
    """

    # The range of each numeric argument, checked before the model is built (ddpm.models.check_kwargs).
    RANGES = {
        "dim": (1, 1024),
        "hidden": (1, 4096),
        "layers": (1, 64),
        "time_dim": (1, 4096),
        "num_classes": (1, 10_000),
    }

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        layers: int = 4,
        time_dim: int = 32,
        residual: bool = True,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.residual = residual
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(SinusoidalEmbedding(time_dim), nn.Linear(time_dim, hidden), nn.SiLU())
        self.label_embed = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.cond = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) if residual else nn.Identity() for _ in range(layers))
        self.linears = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_embed(y)
        h = self.inp(x)
        for cond, norm, linear in zip(self.cond, self.norms, self.linears):
            update = linear(nn.functional.silu(norm(h) + cond(emb)))
            h = h + update if self.residual else update
        return self.out(nn.functional.silu(h))
