"""The one rule for names chosen from a registry (a sampler, a schedule, a model, a data set, …)."""

from __future__ import annotations

from collections.abc import Collection


def check_name(kind: str, name: object, choices: Collection[str]) -> str:
    """Return ``name`` if it is one of ``choices``, else raise a one-line ValueError listing them."""
    if not isinstance(name, str) or name not in choices:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(choices)}")
    return name
