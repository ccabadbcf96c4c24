"""The full denoising UNet of Ho et al. (2020), with the refinements of Nichol & Dhariwal (2021).

A stack of resolution levels, each ``num_res_blocks`` residual blocks (GroupNorm → SiLU → conv, twice) with
optional self-attention, separated by stride-2 convolutions on the way down and nearest-neighbour
up-sampling + conv on the way up. Every encoder output is kept and concatenated back in the decoder (the
skip connections). The timestep (and optionally the class label) is embedded once and added to every
residual block, as one bias per channel or, with ``use_scale_shift_norm``, as a scale and shift of the
normalised features (adaptive group norm).

The last convolution of every residual block, the projection of every attention block and the output
convolution start at zero, so at initialisation each block is the identity and the network outputs zero.

Sizes need not be powers of two: 28 → 14 → 7 for MNIST. Down-sampling is ``ceil(n / 2)`` and up-sampling
goes to the exact size of the skip it meets, so any image size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.models.embeddings import sinusoidal_embedding
from ddpm.models.layers import num_groups

MIN_GROUP_CHANNELS = 4


def _num_groups(channels: int, groups: int) -> int:
    """GroupNorm groups for ``channels``: at most ``groups``, with at least ``MIN_GROUP_CHANNELS`` in each.

    The floor matters: the time embedding is added as a per-channel bias *before* ``norm2``, and a group of
    one channel (instance norm, e.g. 32 groups of 32 channels) would subtract that bias right away, leaving
    the block blind to ``t``. Ho et al.'s 32 groups of 128 channels hold 4 channels each.
    """
    return num_groups(channels, groups, MIN_GROUP_CHANNELS)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block: ``x + conv(drop(act(norm(conv(act(norm(x)))) + emb))))``, with a 1×1 conv on the skip
    when the number of channels changes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        groups: int = 32,
        use_scale_shift_norm: bool = False,
        patch_size: int = 1,
    ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = nn.GroupNorm(_num_groups(in_channels, groups), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = nn.GroupNorm(_num_groups(out_channels, groups), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(emb)[:, :, None, None]  # emb is already SiLU-activated by the caller
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection.

    Works on ``(B, H·W, C)`` tokens; for ``channels_last`` inputs getting there and back is free (views).
    """

    def __init__(self, channels: int, num_heads: int = 4, groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the number of channels ({channels})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_num_groups(channels, groups), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)
        qkv = self.qkv(tokens).view(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, d)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(B, H * W, C)
        out = self.proj(a).view(B, H, W, C).permute(0, 3, 1, 2)
        return x + out


class Downsample(nn.Module):
    """3×3 convolution with stride 2: ``n → ceil(n / 2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour up-sampling to an exact ``size`` (that of the skip to come), then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    """Denoising UNet: ``forward(x, t, y=None)`` maps ``x`` ``(B, C, H, W)`` to ``(B, out_channels, H, W)``.

    Args:
        in_channels: image channels.
        out_channels: output channels (default ``in_channels``; twice that to also predict a variance).
        image_size: side of the training images; only used to tell which levels get attention.
        model_channels: channels of the first level; level ``i`` has ``model_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level; each level after the first halves the size.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: feature-map sizes (in pixels) at which self-attention follows each res block;
            the middle block always has attention.
        num_heads: attention heads.
        dropout: dropout rate inside the residual blocks.
        num_classes: if set, the model is class-conditional: ``y`` in ``0 … num_classes - 1`` selects a
            learned embedding added to the time embedding, and ``num_classes`` (or ``y=None``) is the
            "no label" embedding used for classifier-free guidance.
        groups: GroupNorm groups, reduced where needed to divide the channels with at least 4 channels per
            group (see ``_num_groups``).
        time_embed_mult: width of the time embedding MLP, in multiples of ``model_channels``.
        use_scale_shift_norm: condition through ``norm(h) * (1 + scale) + shift`` instead of a bias.
        patch_size: a patchifying stem: the input is folded into ``patch_size²`` times the channels at
            ``1 / patch_size`` of the size (pixel unshuffle, 28×28×1 → 14×14×4 for 2) before ``conv_in``,
            and the output unfolded back (pixel shuffle), so every level works on smaller maps.
            ``attention_resolutions`` then count the folded sizes.
    """

    # The range of each numeric argument (of each item of a list), checked before the model is built
    # (ddpm.models.check_kwargs).
    RANGES = {
        "in_channels": (1, 64),
        "out_channels": (1, 64),
        "image_size": (1, 1024),
        "model_channels": (1, 1024),
        "channel_mult": (1, 64),
        "num_res_blocks": (1, 64),
        "attention_resolutions": (1, 1024),
        "num_heads": (1, 1024),
        "dropout": (0.0, 1.0),
        "num_classes": (1, 10_000),
        "groups": (1, 1024),
        "time_embed_mult": (1, 64),
        "patch_size": (1, 16),
    }

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        image_size: int = 28,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (7,),
        num_heads: int = 4,
        dropout: float = 0.1,
        num_classes: int | None = None,
        groups: int = 32,
        time_embed_mult: int = 4,
        use_scale_shift_norm: bool = False,
        patch_size: int = 1,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.num_classes = num_classes
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide the image size ({image_size})")
        self.patch_size = patch_size
        attention_resolutions = set(attention_resolutions)
        emb_dim = model_channels * time_embed_mult

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, groups, use_scale_shift_norm)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, groups)

        self.conv_in = nn.Conv2d(in_channels * patch_size**2, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [model_channels]
        ch, size = model_channels, image_size // patch_size
        sizes = []  # feature-map size of each level
        for level, mult in enumerate(channel_mult):
            sizes.append(size)
            for _ in range(num_res_blocks):
                layers = [res(ch, model_channels * mult)]
                ch = model_channels * mult
                if size in attention_resolutions:
                    layers.append(attn(ch))
                self.down.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_channels.append(ch)
                size = (size + 1) // 2

        self.middle = nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if sizes[level] in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.up.append(nn.ModuleList(layers))

        self.out = nn.Sequential(
            nn.GroupNorm(_num_groups(ch, groups), ch),
            nn.SiLU(),
            _zero(nn.Conv2d(ch, out_channels * patch_size**2, 3, padding=1)),
        )

    def _embed(
        self, t: torch.Tensor, y: torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        emb = self.time_embed(sinusoidal_embedding(t, self.model_channels))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
            elif y.device.type == "cpu" and y.numel():  # (on GPUs the check would cost a sync each step)
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi > self.num_classes:
                    raise ValueError(
                        f"labels must lie in 0 … {self.num_classes} (the last one meaning"
                        f" 'no label'), got {lo} … {hi}"
                    )
            emb = emb + self.label_embed(y).to(emb.dtype)
        return F.silu(emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self._embed(t, y, x.shape[0], x.device)
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)  # (B, C, H, W) → (B, C·p², H/p, W/p)
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layers in self.up:
            h = torch.cat([h, skips.pop().to(h.dtype)], dim=1)
            for layer in layers:
                h = layer(h, skips[-1].shape[-2:]) if isinstance(layer, Upsample) else layer(h, emb)
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch_size) if self.patch_size > 1 else h
