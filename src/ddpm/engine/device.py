"""Where and in what precision to compute: the device a config names, and bf16 only where it is native."""

from __future__ import annotations

import torch

from ddpm.config import check_device_name


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` must be
    there. A one-line ValueError for a device written wrongly or not on this machine."""
    if check_device_name(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {name!r} is not available: {why} (torch {torch.__version__})")
        if (device.index or 0) >= count:
            raise ValueError(f"device {name!r} is not available: this machine has cuda:0…cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} is not available on this machine")
    return device


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
