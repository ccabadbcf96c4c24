"""The one writer of ``benchmarks/results.json``: every script merges its figures into it."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

from ddpm.engine.device import resolve_precision

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

RESULTS = Path(__file__).resolve().parent / "results.json"


def merge_results(update: dict, path: Path = RESULTS) -> dict:
    """Merge ``update`` into the JSON at ``path`` (created if missing) and write it back, keys sorted.

    Top-level keys are replaced, except that a dict merges into a dict already there (so ``quality.uncond``
    and ``quality.cond`` can come from separate runs). A lock file next to ``path`` serialises scripts
    that finish at the same time (POSIX; elsewhere, do not run them at once).
    """
    with open(path.with_suffix(".lock"), "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.exists() else {}
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(results.get(key), dict):
                results[key].update(value)
            else:
                results[key] = value
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        partial.replace(path)
    return results


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(script: str, argv: list[str] | None) -> dict:
    """What every recorded figure carries: the command that produced it, when, and on what."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": shlex.join(["python", f"benchmarks/{script}", *args]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_precision_auto": resolve_precision("auto", torch.device("cpu")),  # bf16 only where native
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
