"""Checkpoints: safetensors for tensors, a small JSON for the rest, written atomically and checksummed.

A checkpoint is a folder ``checkpoints/step-00000500/`` holding ``model.safetensors``, ``ema.safetensors``,
``optimizer.safetensors`` (the optimiser moments), ``state.json`` and ``SHA256SUMS`` (the others' SHA-256,
in the format of ``sha256sum -c``). It is written under a temporary name, every file fsynced, then renamed
into place in one step, so a crash at any moment leaves either the complete new checkpoint or none; a write
that fails (full disk, read-only folder) leaves the earlier checkpoints as they were and says so. Loading
checks each file against ``SHA256SUMS`` (a checkpoint without one is refused) and reads tensors and JSON
only: no pickle, ever. Other step folders of a run (the post-hoc EMA snapshots) are written the same way
(:func:`save_step_folder`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Collection
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from ddpm.fileio import fsync_dir, write_synced

PREFIX = "step-"
SUMS = "SHA256SUMS"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming it."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message is one line saying which checkpoint is kept."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    """The folder name of a step's checkpoint (and of a post-hoc EMA snapshot): ``step-NNNNNNNN``."""
    return f"{PREFIX}{step:08d}"


def step_at(fraction: float, max_steps: int) -> int:
    """The step at ``fraction`` of a horizon of ``max_steps`` steps (at least step 1): the checkpoint a
    fraction of training names, for training that keeps it and for sampling that loads it."""
    return max(1, round(fraction * max_steps))


def list_step_folders(root: Path) -> list[Path]:
    """The complete ``step-NNNNNNNN`` folders under ``root``, oldest first (temporary folders of interrupted
    writes are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    return list_step_folders(checkpoint_dir(run_dir))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def kept(run_dir: Path, which: str = "previous") -> str:
    """The end of a message about a failure: the checkpoint that is still there to resume from."""
    latest = latest_checkpoint(run_dir)
    return f"the {which} checkpoint {latest.name} is kept" if latest else "there is no earlier checkpoint"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_step_folder(root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
    """Write ``root/step-NNNNNNNN/``: ``{name}.safetensors`` per entry of ``tensors``, ``state.json`` and
    ``SHA256SUMS``, under a temporary name, fsynced, then renamed into place. A folder already there is kept.

    Raises:
        OSError: the write failed (full disk, read-only folder); its partial files are removed.
    """
    final = Path(root) / step_name(step)
    if final.exists():
        return final
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    files = {
        f"{name}.safetensors": safetensors.torch.save(_contiguous(group)) for name, group in tensors.items()
    }
    files["state.json"] = json.dumps(state, indent=1).encode()
    files[SUMS] = sums_file(files)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(".tmp-*"):  # left by a process killed mid-write: never valid
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        for name, data in files.items():
            write_synced(tmp / name, data)
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:  # a full disk, or Ctrl-C mid-write
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def sums_file(files: dict[str, bytes]) -> bytes:
    """The ``SHA256SUMS`` of ``files`` (a path relative to their folder → its bytes), as ``sha256sum`` writes
    it."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items()).encode()


def check_sums(folder: Path) -> list[str]:
    """Check a whole folder against its ``SHA256SUMS`` (what ``sha256sum -c`` does, and more): every file
    it lists is there with its SHA-256, and every file under ``folder`` is listed. Returns the names.

    Raises:
        CheckpointError: naming the first file missing, changed, or not listed.
    """
    folder = Path(folder)
    expected = _sums(folder)
    for name, digest in expected.items():
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{path}: listed in {SUMS} but unreadable ({e.strerror or e})") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{path}: failed its SHA-256 check (changed, truncated or corrupted)")
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    unlisted = [name for name in found if name != SUMS and name not in expected]
    if unlisted:
        raise CheckpointError(f"{folder / unlisted[0]}: not listed in {SUMS}, so it cannot be checked")
    return list(expected)


def save_checkpoint(
    run_dir: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict,
    keep: int = 2,
    keep_steps: Collection[int] = (),
) -> Path:
    """Write ``{name}.safetensors`` per entry of ``tensors``, ``state.json`` and ``SHA256SUMS``; keep the last
    ``keep`` checkpoints, and those of ``keep_steps`` for good.

    Raises:
        CheckpointWriteError: the write failed (full disk, read-only folder); its partial files are
            removed and the earlier checkpoints are untouched.
    """
    root = checkpoint_dir(run_dir)
    try:
        final = save_step_folder(root, step, tensors, state)
    except OSError as e:
        raise CheckpointWriteError(
            f"could not write checkpoint {root / step_name(step)}: {e.strerror or e}; {kept(run_dir)}"
        ) from e
    for old in list_checkpoints(run_dir)[:-keep]:
        if int(old.name[len(PREFIX) :]) not in keep_steps:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _read(path: Path) -> bytes:
    """The bytes of one checkpoint file, checked against its folder's ``SHA256SUMS``."""
    expected = _sums(path.parent)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
    if path.name not in expected:
        raise CheckpointError(f"{path}: not listed in {SUMS}, so it cannot be checked")
    if hashlib.sha256(data).hexdigest() != expected[path.name]:
        raise CheckpointError(f"{path}: failed its SHA-256 check (truncated or corrupted)")
    return data


def _sums(folder: Path) -> dict[str, str]:
    """File name → SHA-256 from ``SHA256SUMS``, which every checkpoint must have: without it nothing could
    tell a damaged file from a good one."""
    path = folder / SUMS
    if not path.exists():
        raise CheckpointError(
            f"{folder}: has no {SUMS}, so its files cannot be checked; to accept them as they are, write one:"
            f" (cd {folder} && sha256sum *.safetensors state.json > {SUMS})"
        )
    try:
        return {
            name: digest for digest, name in (line.split("  ", 1) for line in path.read_text().splitlines())
        }
    except (OSError, ValueError):  # ValueError: undecodable bytes or a line without two fields
        raise CheckpointError(f"{path}: unreadable (truncated or corrupted?)") from None


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read one safetensors file, with a one-line error for a missing, truncated or corrupted file (or any
    other file under that name: it is parsed as safetensors, never unpickled)."""
    path = Path(path)
    data = _read(path)
    try:
        tensors = safetensors.torch.load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as e:
        reason = " ".join(str(e).split())
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupted?): {reason}"
        ) from None
    return {k: v.to(device) for k, v in tensors.items()}


def load_state(ckpt: Path) -> dict:
    """A checkpoint's ``state.json``, with a one-line error for a missing, corrupted or foreign file, or for
    a value of the wrong type (it may have no ``SHA256SUMS`` to vouch for it)."""
    path = Path(ckpt) / "state.json"
    data = _read(path)
    try:
        state = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a checkpoint's state (no step)")

    def count(x) -> bool:
        return type(x) is int and 0 <= x < 2**63

    def number(x) -> bool:  # NaN and infinities come from json too
        return type(x) in (int, float) and math.isfinite(x)

    def setting(x) -> bool:  # a value of an optimiser's parameter group: lr, betas, eps, flags, params
        return x is None or type(x) is bool or number(x) or isinstance(x, list) and all(map(number, x))

    def optimizer(x) -> bool:
        groups, scalars = (x.get("param_groups"), x.get("scalars")) if isinstance(x, dict) else (0, 0)
        return (
            isinstance(groups, list)
            and all(isinstance(g, dict) and all(map(setting, g.values())) for g in groups)
            and isinstance(scalars, dict)
            and all(map(number, scalars.values()))
        )

    rules = {
        "step": (count, "a non-negative integer"),
        "order": (
            lambda x: isinstance(x, dict) and all(count(x.get(k)) for k in ("epoch", "position")),
            "epoch and position, two non-negative integers",
        ),
        "train_seconds": (lambda x: number(x) and x >= 0, "a non-negative number"),
        "images_seen": (count, "a non-negative integer"),
        "world_size": (lambda x: count(x) and x >= 1, "a positive integer"),
        "optimizer": (optimizer, "param_groups and scalars holding numbers"),
        "posthoc_ema": (lambda x: isinstance(x, list) and all(map(number, x)), "a list of numbers"),
    }
    for key, (ok, what) in rules.items():
        if key in state and not ok(state[key]):
            shown = json.dumps(state[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise CheckpointError(f"{path}: {key} must be {what}, got {shown}")
    return state


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes in sorted order: equal iff the weights are identical."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state dict into tensors (for safetensors) and plain JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, entry in state.items():  # fused AdamW would fail mid-step on moments of another shape
        shapes = {tuple(v.shape) for v in entry.values() if isinstance(v, torch.Tensor) and v.ndim}
        if idx >= len(params) or shapes - {tuple(params[idx].shape)}:
            raise ValueError(f"the optimiser state of parameter {idx} does not fit the model")
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights into ``model``, with a one-line error when they belong to another model or config."""
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    bad_shape = [k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape]
    if missing or unexpected or bad_shape:
        detail = sorted(missing)[:1] or sorted(unexpected)[:1] or bad_shape[:1]
        raise CheckpointError(
            f"{source}: these weights belong to another model or config (first mismatch: {detail[0]})"
        )
    model.load_state_dict(tensors)
