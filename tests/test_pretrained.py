"""The pretrained models in ``pretrained/``: each run folder is intact, loads and samples, and all of them
together stay within 10 MB (``pretrained/README.md``)."""

import json

import pytest
import torch

from ddpm import run
from ddpm.cli import main
from ddpm.engine import checkpoint as ckpt
from tests.notebook_runner import ROOT

PRETRAINED = ROOT / "pretrained"
LIMIT = 10_000_000  # bytes, everything under pretrained/ together
FOLDERS = sorted(p.parent for p in PRETRAINED.glob("*/config.json"))


def check_folder(folder) -> torch.Tensor:
    """What every folder under pretrained/ must pass: every file as its SHA256SUMS says, an export (the EMA
    alone), and 4 finite samples in 2 steps (one of each first class, for a conditional model)."""
    ckpt.check_sums(folder)
    assert run.is_export(folder), f"{folder}: not made by ddpm export (no {run.EXPORT_FILE})"
    loaded = run.load_run(folder, device="cpu")
    cfg = run.sampling_config(loaded.cfg, steps=2)
    label = torch.arange(4) % cfg.model.num_classes if cfg.model.num_classes else None
    x = run.sample(cfg, loaded.model, loaded.schedule, 4, label=label, progress=False)
    return run.check_finite(x)


NONE_YET = pytest.mark.skip(reason="no run folder under pretrained/ yet (see pretrained/README.md)")


@pytest.mark.parametrize(
    "folder", [pytest.param(f, id=f.name) for f in FOLDERS] or [pytest.param(None, marks=NONE_YET)]
)
def test_a_pretrained_run_is_intact_and_samples(folder):
    x = check_folder(folder)
    assert x.shape[0] == 4 and x.abs().max() <= 1 + 1e-6


def test_pretrained_stays_small():
    sizes = {p: p.stat().st_size for p in PRETRAINED.rglob("*") if p.is_file()}
    total = sum(sizes.values())
    largest = max(sizes, key=sizes.get, default=None)
    assert total <= LIMIT, f"pretrained/ holds {total:,} bytes, over {LIMIT:,} (largest: {largest})"


def test_the_check_passes_an_export_and_catches_a_changed_file(tiny_spiral_run, tmp_path, capsys):
    """So that the first test, skipped while pretrained/ is empty, is known to check what it says."""
    out = tmp_path / "export"
    assert main(["export", str(tiny_spiral_run), "--out", str(out)]) == 0
    assert check_folder(out).shape == (4, 2)
    saved = (out / "config.json").read_bytes()
    config = json.loads(saved)
    config["sample"]["steps"] = 7
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ckpt.CheckpointError, match="config.json: failed its SHA-256 check"):
        check_folder(out)
    (out / "config.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="config.json: listed in SHA256SUMS but unreadable"):
        check_folder(out)
    (out / "config.json").write_bytes(saved)
    (out / "notes.txt").write_text("added later")
    with pytest.raises(ckpt.CheckpointError, match="notes.txt: not listed in SHA256SUMS"):
        ckpt.check_sums(out)
