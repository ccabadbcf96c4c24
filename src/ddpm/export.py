"""Export a run: a small folder holding what sampling and evaluation need, and nothing to train on from.

``ddpm export RUN --out DIR`` writes ``config.json``, one checkpoint with the final EMA weights alone
(``checkpoints/step-N/``: ``ema.safetensors``, a ``state.json`` of step, images seen and time, its
``SHA256SUMS``), the run's ``metrics.json`` and ``eval/`` reports with their grids, ``export.json`` (where and
when it came from) and a ``SHA256SUMS`` over all of them. :func:`ddpm.run.load_run` reads it like the run, so
``ddpm sample``, ``eval`` and ``info`` give the same results from both; ``ddpm train`` refuses it. The folder
is written under a temporary name and renamed into place: a failure leaves nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm.config import ConfigError, apply_overrides
from ddpm.data import IMAGE_SETS
from ddpm.engine import checkpoint as ckpt
from ddpm.evaluate import EVAL_DIR
from ddpm.fileio import fsync_dir, write_synced
from ddpm.run import CONFIG_FILE, EXPORT_FILE, RunError, check_config, guidance_of, is_export, load_run

METRICS_FILE = "metrics.json"  # the final metrics of training, a report worth keeping beside the weights
STATE_KEYS = ("step", "images_seen", "train_seconds", "world_size")  # what the exported state.json keeps


@dataclass
class Export:
    out: Path
    step: int
    sizes: dict[str, int]  # every file written, relative to ``out`` → bytes

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that holds anything: an export never mixes with other files."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file; choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise RunError(f"--out {out}: is not empty; choose a new or empty folder")


def machine_free(cfg):
    """The config without what only said where the run was trained (the data cache of a named image set,
    the device): an export samples and evaluates on any machine. Returns it and the changes made."""
    cfg, changes = copy.deepcopy(cfg), {}
    if cfg.data.name in IMAGE_SETS and cfg.data.root is not None:  # a "folder" set's root is its data
        changes["data.root"] = {"was": cfg.data.root, "now": None}
        cfg.data.root = None
    if cfg.train.device != "auto":
        changes["train.device"] = {"was": cfg.train.device, "now": "auto"}
        cfg.train.device = "auto"
    return cfg, changes


def with_sample_settings(cfg, overrides: list[str]):
    """The config with ``--set sample.KEY=VALUE`` applied: how the export samples by default (its
    guidance, sampler, steps). Only ``sample.*`` keys: the weights were trained with the rest. Returns it
    and the changes made."""
    for item in overrides:
        if not item.strip().startswith("sample."):
            raise ConfigError(
                f"--set {item!r}: an export changes sample.* settings alone (the weights were trained with "
                "the rest)"
            )
    changed = check_config(apply_overrides(cfg, overrides))
    was, now = dataclasses.asdict(cfg.sample), dataclasses.asdict(changed.sample)
    changes = {f"sample.{k}": {"was": was[k], "now": now[k]} for k in now if now[k] != was[k]}
    return changed, changes


def half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors rounded to fp16, at half the size: how an export keeps autoguidance's guide
    (it only steers: its output enters as w (ε − ε_guide)) and, with ``--fp16``, the final weights too;
    loading casts them back to fp32."""
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def export_run(run_dir: Path, out: Path, fp16: bool = False, sample_settings: list[str] = ()) -> Export:
    """Write the export of the run in ``run_dir`` to the new or empty folder ``out`` (see the module's
    docstring); ``fp16``: the final EMA weights rounded to fp16 too, at half the size (loaded as fp32);
    ``sample_settings``: ``sample.KEY=VALUE`` changes to how the export samples by default
    (:func:`with_sample_settings`). Refused, with nothing written: a folder that is not a run or is an
    export, a checkpoint without EMA weights, a setting outside ``sample``, an ``out`` that holds
    anything."""
    run_dir, out = Path(run_dir), Path(out)
    if is_export(run_dir):
        raise RunError(f"{run_dir}: is an export already; copy the folder instead")
    check_out(out)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not (latest / "ema.safetensors").exists():
        raise RunError(f"{run_dir}: {latest.name} has no EMA weights (ema.safetensors) to export")
    loaded = load_run(run_dir, device="cpu")  # config, checkpoint and EMA weights: all checked
    ema = ckpt.load_tensors(latest / "ema.safetensors")
    if fp16:
        ema = half(ema)
    state = ckpt.load_state(latest)
    cfg, changes = machine_free(loaded.cfg)
    cfg, sample_changes = with_sample_settings(cfg, list(sample_settings))
    changes.update(sample_changes)
    guide = guidance_of(run_dir, cfg, None, device="cpu").folder  # checked like the weights
    provenance = {
        "exported_from": str(run_dir),
        "checkpoint": latest.name,
        **{key: state[key] for key in STATE_KEYS if key in state},
        "weights": f"the EMA of the weights (train.ema_decay {cfg.train.ema_decay:g})"
        + (", rounded to fp16 (ddpm export --fp16)" if fp16 else ""),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "ema_tensors_sha256": ckpt.tensors_sha256(ema),
        "config_changes": changes,
        "train_again": f"ddpm train {CONFIG_FILE} --out NEW_RUN  (the same recipe, from step 0)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ddpm": _version("ddpm-from-scratch"),
        "torch": torch.__version__,
    }
    copies = [run_dir / METRICS_FILE] + sorted((run_dir / EVAL_DIR).glob("*.json"))
    copies += sorted((run_dir / EVAL_DIR).glob("*.png"))

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        ckpt.save_step_folder(
            tmp / "checkpoints", state["step"], {"ema": ema}, {k: state[k] for k in STATE_KEYS if k in state}
        )
        if guide is not None:  # autoguidance's checkpoint (sample.guide_at): its EMA weights, in fp16
            guide_state = ckpt.load_state(guide)
            guide_ema = {"ema": half(ckpt.load_tensors(guide / "ema.safetensors"))}
            guide_state = {k: guide_state[k] for k in STATE_KEYS if k in guide_state}
            ckpt.save_step_folder(tmp / "checkpoints", guide_state["step"], guide_ema, guide_state)
        write_synced(tmp / CONFIG_FILE, (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
        write_synced(tmp / EXPORT_FILE, (json.dumps(provenance, indent=2) + "\n").encode())
        for source in copies:
            if source.is_file():
                target = tmp / source.relative_to(run_dir)
                target.parent.mkdir(exist_ok=True)
                write_synced(target, source.read_bytes())
        files = {p.relative_to(tmp).as_posix(): p for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_synced(tmp / ckpt.SUMS, ckpt.sums_file({name: p.read_bytes() for name, p in files.items()}))
        ckpt.check_sums(tmp)
        for folder in {tmp, *(p.parent for p in files.values())}:
            fsync_dir(folder)
        os.rename(tmp, out)  # replaces an empty folder in one step
        fsync_dir(out.parent)
    except BaseException:  # a full disk, or Ctrl-C mid-write: nothing is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sizes = {name: (out / name).stat().st_size for name in [*files, ckpt.SUMS]}
    return Export(out, state["step"], sizes)


def provenance(run_dir: Path) -> dict | None:
    """An exported run's ``export.json`` (where, when and what it was exported from), or None for a run."""
    path = Path(run_dir) / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: unreadable ({e})") from None
    return found if isinstance(found, dict) else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
