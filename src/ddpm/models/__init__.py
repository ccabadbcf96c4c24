"""The denoising networks. Models know nothing of diffusion: each maps (x_t, t, y) to a tensor shaped
like x_t, and the diffusion code decides what that tensor means (ε, x_0 or v).

Each model class declares the ranges of its constructor's numeric arguments (``RANGES``) next to it; their
types come from the constructor's annotations. :func:`check_kwargs` holds both, before anything is built.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Sequence
from importlib import import_module
from typing import NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ddpm.registry import check_name


class ModelEntry(NamedTuple):
    target: str  # "module:Class", imported lazily so that a 2-D run never imports the UNets
    data: str  # what it denoises: "points" (B, dim) or "images" (B, C, H, W)


MODELS = {
    "mlp": ModelEntry("ddpm.models.mlp:MLPDenoiser", "points"),
    "series_unet": ModelEntry("ddpm.models.series_unet:SeriesUNet", "images"),
    "unet": ModelEntry("ddpm.models.unet:UNet", "images"),
}

# The constructor arguments that must equal the data's width: a point's dimension, an image's channels.
SHAPE_ARGUMENTS = {"points": ("dim",), "images": ("in_channels", "out_channels")}


def model_class(name: str) -> type[nn.Module]:
    module, cls = MODELS[check_name("model", name, MODELS)].target.split(":")
    return getattr(import_module(module), cls)


def _kind(hint) -> tuple[object, bool]:
    """A constructor annotation as (the type wanted, whether None is allowed too)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else None), len(args) < len(typing.get_args(hint))
    return hint, False


def _is_number(value, integer: bool) -> bool:
    return isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)


def _type_problem(value, hint) -> str | None:
    """What ``value`` should have been for an argument annotated ``hint``, or None if it is that."""
    want, nullable = _kind(hint)
    if value is None and nullable:
        return None
    if want in (int, float):
        ok, what = _is_number(value, want is int), "an integer" if want is int else "a number"
    elif want is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif typing.get_origin(want) in (Sequence, list, tuple) and typing.get_args(want)[:1] == (int,):
        ok = isinstance(value, (list, tuple)) and all(_is_number(v, True) for v in value)
        what = "a list of integers"
    else:  # an annotation this check does not know: the constructor decides
        return None
    return None if ok else what + (" or null" if nullable else "")


def check_kwargs(name: str, kwargs: dict) -> None:
    """Refuse, in one line that begins with the argument's name, a keyword argument that model ``name``
    does not take, of the wrong type, or outside the range its class declares (for a list: each item)."""
    cls = model_class(name)
    hints = typing.get_type_hints(cls.__init__)
    takes = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    ranges = getattr(cls, "RANGES", {})
    for arg, value in kwargs.items():
        if arg not in takes:
            raise ValueError(
                f"{arg} is an unexpected keyword argument of model {name!r}; it takes {', '.join(takes)}"
            )
        what = _type_problem(value, hints.get(arg))
        if what:
            raise ValueError(f"{arg} must be {what}, got {value!r}")
        lo, hi = ranges.get(arg, (None, None))
        items = value if isinstance(value, (list, tuple)) else [value]
        if lo is not None and any(not lo <= v <= hi for v in items if v is not None):
            each = " (each item)" if isinstance(value, (list, tuple)) else ""
            raise ValueError(f"{arg} must lie in {lo:,}…{hi:,}{each} for model {name!r}, got {value!r}")


# Random fills of the initialisation: meta tensors hold no values, and torch's meta version of some of them
# imports its compiler first (seconds), so parameter_count skips them.
_RANDOM_FILLS = {"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_"}


class _WithoutRandomFills(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _RANDOM_FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the model registered under ``name`` with keyword arguments from the config, checked
    first (:func:`check_kwargs`)."""
    check_kwargs(name, kwargs)
    return model_class(name)(**kwargs)


def parameter_count(name: str, **kwargs) -> int:
    """The parameters ``build_model(name, **kwargs)`` would have, counted without allocating them (the
    model is built on the meta device), so that a model too large for memory can be refused first."""
    with torch.device("meta"), _WithoutRandomFills():
        return count_parameters(build_model(name, **kwargs))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
