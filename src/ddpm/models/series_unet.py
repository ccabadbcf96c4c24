"""The small UNet of the series (part 2), for 28×28 MNIST: about 54k parameters without time, 61k with.

Two variants of one network, chosen by a flag:

* ``time_conditioning=False`` — "UNet without time": a plain convolutional autoencoder with skip
  connections that ignores ``t``. It can only learn the *average* denoising direction over all noise levels,
  which is exactly what the series uses it to show.
* ``time_conditioning=True`` — "UNet with time embedding": ``t`` goes through a sinusoidal embedding and a
  small MLP, and every block adds a learned projection of that vector to its feature maps, one bias per
  channel.

Every block is a ``ConvEmbed``: ``SiLU(GroupNorm(conv(x)) + proj(emb))``. The levels hold ``c``, ``2c`` and
``4c`` channels at 28, 14 and 7 pixels (``c = model_channels``); the encoder halves the size with stride-2
blocks, the decoder doubles it with nearest-neighbour up-sampling followed by a block, then concatenates the
matching encoder output (the skip connection)::

    x ─ conv ─ E1 (c, 28) ───────────────────────────────────────┐
                 └ E2 (2c, 14, stride 2) ───────────────┐        │
                      └ E3 (4c, 7, stride 2) ─ ↑ D2 (2c) ┴ cat ─ ↑ D1 (c) ┴ cat ─ conv ─ out

Up-sampling goes to the skip's exact size, so any image size works (28 → 14 → 7 → 14 → 28, and odd sizes too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.models.embeddings import SinusoidalEmbedding
from ddpm.models.layers import num_groups


class ConvEmbed(nn.Module):
    """``SiLU(GroupNorm(conv3x3(x)) + Linear(SiLU(emb)))``; without ``emb_dim`` it is just conv-norm-act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int | None = None,
        stride: int = 1,
        groups: int = 8,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(num_groups(out_channels, groups), out_channels)
        self.emb = None if emb_dim is None else nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(self.conv(x))
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None].to(h.dtype)
        return F.silu(h)


class SeriesUNet(nn.Module):
    """The series' small UNet; ``forward(x, t, y=None)`` returns a tensor shaped like ``x``.

    ``t`` (float, shape ``(B,)``) is ignored unless ``time_conditioning``; ``y`` is always ignored (the
    series' class-conditioned model is the big :class:`ddpm.models.unet.UNet`).
    """

    # The range of each numeric argument, checked before the model is built (ddpm.models.check_kwargs).
    RANGES = {
        "in_channels": (1, 64),
        "model_channels": (1, 1024),
        "time_dim": (1, 4096),
        "out_channels": (1, 64),
        "groups": (1, 1024),
    }

    def __init__(
        self,
        in_channels: int = 1,
        model_channels: int = 16,
        time_conditioning: bool = False,
        time_dim: int = 32,
        out_channels: int | None = None,
        groups: int = 8,
    ):
        super().__init__()
        c = model_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.time_conditioning = time_conditioning
        emb = time_dim if time_conditioning else None
        if time_conditioning:
            self.time_embed = nn.Sequential(
                SinusoidalEmbedding(time_dim),
                nn.Linear(time_dim, time_dim),
                nn.SiLU(),
                nn.Linear(time_dim, time_dim),
            )
        else:
            self.time_embed = None
        self.conv_in = nn.Conv2d(in_channels, c, 3, padding=1)
        self.enc1 = ConvEmbed(c, c, emb, groups=groups)
        self.enc2 = ConvEmbed(c, 2 * c, emb, stride=2, groups=groups)
        self.enc3 = ConvEmbed(2 * c, 4 * c, emb, stride=2, groups=groups)
        self.dec2 = ConvEmbed(4 * c, 2 * c, emb, groups=groups)
        self.dec1 = ConvEmbed(4 * c, c, emb, groups=groups)
        self.conv_out = nn.Conv2d(2 * c, out_channels, 3, padding=1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this SeriesUNet is time-conditioned: t is required")
            t = torch.as_tensor(t, device=x.device)
            if t.ndim == 0:
                t = t.expand(x.shape[0])
            emb = self.time_embed(t)
        h = self.conv_in(x)
        s1 = self.enc1(h, emb)
        s2 = self.enc2(s1, emb)
        h = self.enc3(s2, emb)
        h = self.dec2(F.interpolate(h, size=s2.shape[-2:], mode="nearest"), emb)
        h = torch.cat([h, s2.to(h.dtype)], dim=1)
        h = self.dec1(F.interpolate(h, size=s1.shape[-2:], mode="nearest"), emb)
        h = torch.cat([h, s1.to(h.dtype)], dim=1)
        return self.conv_out(h)
