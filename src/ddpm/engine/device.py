"""Where and in what precision to compute: the device a config names, and bf16 only where it is native."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` picks bf16 autocast where the hardware computes in bf16 natively, else fp32.

    A CPU without native bf16 (AVX2 only) runs bf16 convolutions on a slow fallback path, far slower than
    fp32 (docs/results.md), so ``auto`` keeps fp32 there.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"
