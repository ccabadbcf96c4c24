"""Shared argument parsing (and printing what was written) for the walkthrough notebooks.

Every notebook takes ``--out DIR`` (default ``out/<notebook name>`` in the repository root, wherever it is
started from: Jupyter starts kernels in ``notebooks/``) and ``--threads N``. Arguments are read
with ``parse_known_args`` so the same file also runs inside Jupyter, whose kernel passes its own flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def parse_args(name: str, description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """Parse the notebook's flags, create ``args.out`` and apply ``--threads``; returns the namespace."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=description)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / name, help="folder for the figures")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: these tensors are tiny, and more threads than free cores "
        "slow small models down a lot; 0 keeps torch's default)",
    )
    if extra is not None:
        extra(parser)
    args, _ = parser.parse_known_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def wrote(*paths) -> None:
    """Print each file a notebook wrote; inside Jupyter also show it (``ddpm.plotting`` draws with Agg)."""
    for path in paths:
        if path is None:
            continue
        shown = os.path.relpath(path) if Path(path).is_absolute() and ROOT in Path(path).parents else path
        print(f"wrote {shown}")
        if _in_notebook():
            from IPython.display import Image, display

            display(Image(filename=str(path)))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")
