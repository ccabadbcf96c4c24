"""Training images/s of variants of a preset, side by side: the first variant is the baseline, and every
figure is a ratio to it measured in the same process, the variants taking turns (the order rotates each
round), so that a busy or drifting machine touches all of them alike. This is how the screens of issue 19
give each variant the same wall-clock budget: steps = base steps × its ratio.

    python benchmarks/speed_variants.py '{"base": {}, "patch2": {"model.kwargs.patch_size": 2}}'

A variant is a dict of config keys (as ``--set`` takes them, with values as JSON); precision and threads
are the machine's (``precision=auto``; ``--threads``). Nothing is written but the printed table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch
from speed import flops_per_image, our_trainer, throughput

from ddpm.config import apply_overrides
from ddpm.presets import get_preset


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", help="JSON: {name: {config key: value}}; the first is the baseline")
    p.add_argument("--preset", default="mnist-unet")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="each variant's window per round")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = torch.randn(4096, 1, 28, 28).clamp(-1, 1)  # in memory: the data path is not timed
    trainers = {}
    for name, sets in json.loads(args.variants).items():
        cfg = apply_overrides(get_preset(args.preset), [f"{k}={json.dumps(v)}" for k, v in sets.items()])
        trainer = our_trainer(cfg, data, cfg.train.precision, tempfile.mkdtemp())
        flops = flops_per_image(lambda x, t, m=trainer.model: m(x, t), 8, tuple(data.shape[1:]))
        params = sum(q.numel() for q in trainer.model.parameters())
        print(
            f"{name}: {params:,} parameters, {flops['train'] / 1e9:.3f} GFLOP per training image", flush=True
        )
        for _ in range(3):  # warm-up
            trainer.train_step()
        trainers[name] = (trainer, cfg.train.batch_size)
    names = list(trainers)
    rates = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            trainer, batch = trainers[n]
            rates[n].append(throughput(trainer.train_step, batch, args.seconds))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()), flush=True)
    base = statistics.median(rates[names[0]])
    out = {
        n: {"images_per_s": statistics.median(v), "ratio": statistics.median(v) / base}
        for n, v in rates.items()
    }
    for n, d in out.items():
        print(f"{n:16s} {d['images_per_s']:7.1f} images/s   × {d['ratio']:.2f}")
    return out


if __name__ == "__main__":
    main()
