"""The engine: checkpoints, resume continuity, data order, learning rate and EMA."""

import json
import os
import shutil
import subprocess
import time

import pytest
import torch

from ddpm import run, training
from ddpm.config import ConfigError, TrainConfig, apply_overrides, validate
from ddpm.engine import checkpoint as ckpt
from ddpm.engine import trainer as trainer_module
from ddpm.engine.ema import EMA
from ddpm.engine.randomness import BatchOrder
from ddpm.engine.trainer import Trainer, lr_at
from ddpm.presets import get_preset
from tests.conftest import TINY


def tiny_cfg(steps=20, extra=()):
    cfg = apply_overrides(get_preset("spiral"), [*TINY, *extra])
    cfg.train.max_steps = steps
    return cfg


def test_checkpoint_round_trip_and_hash(tmp_path):
    tensors = {"model": {"w": torch.randn(3, 4), "b": torch.arange(5)}, "ema": {"w": torch.ones(2)}}
    path = ckpt.save_checkpoint(tmp_path, 7, tensors, {"step": 7})
    assert path.name == "step-00000007"
    back = ckpt.load_tensors(path / "model.safetensors")
    assert torch.equal(back["w"], tensors["model"]["w"]) and torch.equal(back["b"], tensors["model"]["b"])
    assert ckpt.load_state(path) == {"step": 7}
    assert sorted(p.name for p in path.iterdir()) == [
        "SHA256SUMS",
        "ema.safetensors",
        "model.safetensors",
        "state.json",
    ]
    if shutil.which("sha256sum"):  # the checksums are in sha256sum's own format
        subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=path, check=True)
    assert ckpt.tensors_sha256(back) == ckpt.tensors_sha256(tensors["model"])
    changed = dict(back, w=back["w"].clone())
    changed["w"][0, 0] += 1e-6
    assert ckpt.tensors_sha256(changed) != ckpt.tensors_sha256(back)


def test_checkpoints_are_pruned_and_partial_writes_ignored(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"model": {"w": torch.zeros(1)}}, {"step": step}, keep=2)
    (ckpt.checkpoint_dir(tmp_path) / ".tmp-step-00000009-1").mkdir()  # a crash mid-write
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"


def test_truncated_checkpoint_is_reported(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, {"model": {"w": torch.randn(100)}}, {"step": 1})
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-50])
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load_tensors(f)


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = ckpt.optimizer_to_tensors(opt)
    meta = json.loads(json.dumps(meta))
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    ckpt.optimizer_from_tensors(opt2, tensors, meta)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2)


def test_batch_order_is_seeded_full_and_sharded():
    a = BatchOrder(10, 3, seed=1)
    b = BatchOrder(10, 3, seed=1)
    seq_a = [a.next().tolist() for _ in range(7)]
    assert seq_a == [b.next().tolist() for _ in range(7)]
    assert all(len(s) == 3 for s in seq_a)
    assert sorted(sum(seq_a[:3], [])) == sorted(set(sum(seq_a[:3], [])))  # no repeats within an epoch
    assert seq_a[:3] != seq_a[3:6]  # a new permutation each epoch
    whole = BatchOrder(12, 4, seed=3)
    ranks = [BatchOrder(12, 2, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(5):
        assert whole.next().tolist() == ranks[0].next().tolist() + ranks[1].next().tolist()


def test_lr_schedule_warmup_and_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 120))


def test_ema_update_formula():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        start = model.weight.clone()
        model.weight.add_(1.0)
    ema.update(model, step=0)
    assert torch.allclose(ema.model.weight, 0.9 * start + 0.1 * model.weight)
    assert EMA(model, 0.999, warmup=True).decay_at(0) == pytest.approx(0.1)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run interrupted at step 13 (Ctrl-C) and resumed ends with the weights of an uninterrupted run."""
    straight = training.train(tiny_cfg(20), tmp_path / "a", log=lambda *_: None)
    original = Trainer.train_step

    def interrupted(self):
        loss = original(self)
        if self.step == 13:
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_cfg(20), tmp_path / "b", log=lambda *_: None)
    assert ckpt.latest_checkpoint(tmp_path / "b").name == "step-00000013"
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = training.train(tiny_cfg(20), tmp_path / "b", log=lambda *_: None)
    assert straight["step"] == resumed["step"] == 20
    for name in ("model", "ema"):
        a = ckpt.load_tensors(ckpt.latest_checkpoint(tmp_path / "a") / f"{name}.safetensors")
        b = ckpt.load_tensors(ckpt.latest_checkpoint(tmp_path / "b") / f"{name}.safetensors")
        assert ckpt.tensors_sha256(a) == ckpt.tensors_sha256(b)
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


class Clock:
    """Time as the trainer sees it (``monotonic``), advanced by the test; ``perf_counter`` stays real."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = staticmethod(time.perf_counter)


def test_fit_horizon_ends_the_schedule_inside_the_budget(tmp_path, monkeypatch):
    """train.fit_horizon: once 20 steps after the first are timed, max_steps falls to the steps the rest of
    the budget fits (97 % of it), config.json says so, and the kept fraction of training follows it."""
    clock = Clock()
    monkeypatch.setattr(trainer_module, "time", clock)
    original = Trainer.train_step

    def one_second(self):  # every step takes one second of the trainer's clock
        clock.now += 1.0
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", one_second)
    extra = ["train.max_minutes=2", "train.fit_horizon=true", "sample.guide_at=0.5"]
    extra += ["train.keep_checkpoints=1"]
    done = training.train(tiny_cfg(100_000, extra), tmp_path / "a", log=lambda *_: None)
    # at step 21, 99 s of the 120 are left at 1 s a step: 21 + int(0.97 × 99) = 117
    assert done["step"] == 117
    assert run.load_config(tmp_path / "a" / "config.json").train.max_steps == 117
    kept = [p.name for p in ckpt.list_checkpoints(tmp_path / "a")]
    assert kept == [f"step-{ckpt.step_at(0.5, 117):08d}", "step-00000117"]  # the guide of the fitted horizon
    train = run.load_config(tmp_path / "a" / "config.json").train
    assert lr_at(116, train) == pytest.approx(train.lr * train.min_lr_ratio, rel=0.01)  # the last step's

    clock.now = 0.0  # a horizon the budget fits is left as it is: fitting never lengthens a run
    done = training.train(tiny_cfg(50, extra), tmp_path / "b", log=lambda *_: None)
    assert done["step"] == 50 and run.load_config(tmp_path / "b" / "config.json").train.max_steps == 50
    with pytest.raises(ConfigError, match="train.fit_horizon needs train.max_minutes"):
        validate(tiny_cfg(10, ["train.fit_horizon=true"]))


def test_fit_horizon_times_a_share_of_a_long_budget(tmp_path, monkeypatch):
    """On a long budget train.fit_horizon times 1 % of it, not 20 steps, so that the slow steps of warming up
    weigh less in the speed it fits with."""
    clock = Clock()
    monkeypatch.setattr(trainer_module, "time", clock)
    original = Trainer.train_step

    def warming_up(self):  # steps 1-9 take 0.25 s, the rest 0.125 s; the clock runs out after step 45
        clock.now += 0.25 if self.step < 9 else 0.125
        loss = original(self)
        if self.step == 45:
            clock.now += 1000.0
        return loss

    monkeypatch.setattr(Trainer, "train_step", warming_up)
    extra = ["train.max_minutes=10", "train.fit_horizon=true"]
    done = training.train(tiny_cfg(100_000, extra), tmp_path / "a", log=lambda *_: None)
    assert done["step"] == 45
    # 6 s (1 % of 600) after step 1 is step 41 (8 × 0.25 + 32 × 0.125), at 6.25 s: 0.15 s a step, so
    # 41 + int(0.97 × 593.75 / 0.15) = 3880; timing 20 steps would have fitted 21 + int(0.97 × 596.25 / 0.175)
    assert run.load_config(tmp_path / "a" / "config.json").train.max_steps == 3880


def test_run_folder_is_complete_and_loadable(tmp_path):
    metrics = training.train(tiny_cfg(10), tmp_path, log=lambda *_: None)
    for name in ("config.json", "metrics.json", "metrics.csv", "loss.png"):
        assert (tmp_path / name).is_file(), name
    assert {
        "mean_distance_to_curve",
        "energy_distance",
        "energy_distance_floor",
        "train_seconds",
        "parameters",
    } <= set(metrics)
    loaded = run.load_run(tmp_path)
    assert loaded.step == 10
    x = run.sample(loaded.cfg, loaded.model, loaded.schedule, 16, seed=1)
    assert x.shape == (16, 2) and torch.isfinite(x).all()
    assert torch.equal(x, run.sample(loaded.cfg, loaded.model, loaded.schedule, 16, seed=1))
    loaded.cfg.diffusion.variance = "large"  # the run's reverse-process variance reaches the sampler
    assert not torch.equal(x, run.sample(loaded.cfg, loaded.model, loaded.schedule, 16, seed=1))


def test_weights_of_another_model_are_refused(tiny_spiral_copy):
    cfg = json.loads((tiny_spiral_copy / "config.json").read_text())
    cfg["model"]["kwargs"]["hidden"] = 24
    (tiny_spiral_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="another model"):
        run.load_run(tiny_spiral_copy)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(run.RunError, match="cannot write"):
        training.train(tiny_cfg(5), locked / "run", log=lambda *_: None)
