"""Quality per CPU minute of the peer: diffusers' UNet trained on the same wall-clock budget, measured
with our FLD (issue 6, part 2, the comparison that matters most).

    python benchmarks/peer_quality.py --out runs/q-diffusers --minutes 60 --max-steps 1800

1. Builds diffusers' ``UNet2DModel`` twin of the preset's UNet (``speed.diffusers_twin``: the same levels,
   blocks, attention and parameter count within 5 %) and trains it with diffusers' own training step
   (``speed.DiffusersTrainer``: the step of its ``train_unconditional.py`` example, ``DDPMScheduler`` with
   the cosine schedule, AdamW, its cosine LR schedule with warm-up, ``EMAModel``) on the same training
   images, batch, learning rate, warm-up, clipping and EMA decay as the preset, until ``--minutes`` of wall
   time or ``--max-steps`` (the LR horizon). The state is saved every ``--checkpoint-minutes`` and at the
   end; running the command again resumes it (the budget counts the time already spent).
2. Samples ``--n`` images from the EMA weights with OUR sampler (``ddpm.run.sample``, the same sampler,
   steps, clipping and 8-bit quantisation as ``benchmarks/quality.py``), so that only the training
   differs, and measures them with ``ddpm.evaluate.measure_samples``: FLD, the floor at the same N and
   their ratio.
3. Merges ``fld_ratio_uncond_diffusers`` and the details under ``peer_quality`` into
   ``benchmarks/results.json`` (with ``--tag _seed1``: ``fld_ratio_uncond_diffusers_seed1`` and
   ``peer_quality_seed1``, for a run with ``--set seed=1`` beside the headline).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel
from record import RESULTS, merge_results, provenance
from speed import DiffusersTrainer, diffusers_twin
from torch import nn

from ddpm import plotting
from ddpm.config import apply_overrides
from ddpm.data import images as image_data
from ddpm.evaluate import GRID_N, ReferenceSet, measure_samples, quantize
from ddpm.models import count_parameters
from ddpm.presets import get_preset
from ddpm.progress import progress_bar
from ddpm.run import build_schedule, make_model, sample, sampling_config

STATE = "state.pt"


class Wrapped(nn.Module):
    """diffusers' UNet behind our models' call signature ``model(x, t, y=None) -> ε``."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        return self.unet(x, t).sample


def train(trainer: DiffusersTrainer, out: Path, minutes: float, max_steps: int, every_minutes: float) -> dict:
    """Train (resuming ``out/state.pt`` if there) until the budget or ``max_steps``; returns the state."""
    done = {"step": 0, "train_seconds": 0.0, "wall_seconds": 0.0}
    path = out / STATE
    if path.exists():
        saved = torch.load(path, weights_only=False)
        trainer.unet.load_state_dict(saved["unet"])
        trainer.ema.load_state_dict(saved["ema"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        trainer.generator.set_state(saved["generator"])
        done = saved["done"]
        print(f"resuming at step {done['step']} ({done['wall_seconds'] / 60:.1f} of {minutes} minutes spent)")

    def save() -> None:
        state = {
            "unet": trainer.unet.state_dict(),
            "ema": trainer.ema.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "lr_scheduler": trainer.lr_scheduler.state_dict(),
            "generator": trainer.generator.get_state(),
            "done": done,
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    start, spent = time.monotonic(), done["wall_seconds"]
    last_save, window, losses = start, time.perf_counter(), []
    bar = progress_bar(total=max_steps, initial=done["step"], desc="diffusers train")
    with open(out / "metrics.csv", "a") as log:
        while done["step"] < max_steps and spent + time.monotonic() - start < minutes * 60:
            t0 = time.perf_counter()
            losses.append(trainer.train_step())
            done["train_seconds"] += time.perf_counter() - t0
            done["step"] += 1
            bar.update(1)
            if done["step"] % 50 == 0:
                ips = len(losses) * trainer.batch / (time.perf_counter() - window)
                loss = torch.stack(losses).mean().item()
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.0f}", refresh=False)
                log.write(f"{done['step']},{loss:.6f},{ips:.1f},{done['train_seconds']:.1f}\n")
                log.flush()
                window, losses = time.perf_counter(), []
            if time.monotonic() - last_save > every_minutes * 60:
                done["wall_seconds"] = spent + time.monotonic() - start
                save()
                last_save = time.monotonic()
    bar.close()
    done["wall_seconds"] = spent + time.monotonic() - start
    save()
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist-unet", help="an unconditional UNet preset")
    p.add_argument("--out", required=True, type=Path, help="the run folder (resumed if it exists)")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, help="LR horizon and step limit (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--sampler", default="dpmpp2m-sde")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--tag", default="", help="suffix of the result keys, e.g. _seed1 (default: the headline)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = apply_overrides(get_preset(args.preset), args.set)
    if cfg.model.name != "unet" or cfg.model.num_classes:
        raise SystemExit(f"--preset {args.preset}: diffusers' twin is built for the unconditional UNet")
    if args.max_steps:
        cfg.train.max_steps = args.max_steps
    cfg = sampling_config(cfg, sampler=args.sampler, steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg.save(args.out / "config.json")

    ours = count_parameters(make_model(cfg))
    twin_config = diffusers_twin(cfg.model.kwargs, cfg.data.image_size, cfg.data.channels, ours)
    torch.manual_seed(cfg.seed)
    unet = UNet2DModel(**twin_config)
    data = image_data.to_tensor(image_data.load(cfg.data.name, "train", root=cfg.data.root)[0])
    trainer = DiffusersTrainer(unet, cfg, data, precision="fp32")
    done = train(trainer, args.out, args.minutes, cfg.train.max_steps, args.checkpoint_minutes)
    print(f"trained {done['step']} steps in {done['wall_seconds'] / 60:.1f} minutes")

    ema_unet = copy.deepcopy(unet)
    trainer.ema.copy_to(ema_unet.parameters())
    model = Wrapped(ema_unet.eval())
    reference = ReferenceSet.load(cfg.data.name, cfg.data.root)
    reference.check(args.n)
    t0 = time.perf_counter()
    x = sample(cfg, model, build_schedule(cfg), args.n, seed=args.seed, batch_size=100, progress=True)
    sample_seconds = time.perf_counter() - t0
    x = quantize(x.float())
    report = measure_samples(x, reference, seed=args.seed)
    grid = args.out / f"{args.sampler}-{args.steps}-n{args.n}-s{args.seed}.png"
    plotting.save_grid(grid, x[:GRID_N], nrow=math.ceil(math.sqrt(min(args.n, GRID_N))))
    ratio = report["fld"] / report["fld_train_test"]
    detail = {
        "preset": args.preset,
        "overrides": args.set,
        "diffusers_config": twin_config,
        "parameters": {"diffusers": count_parameters(unet), "ours": ours},
        "minutes": args.minutes,
        "threads": args.threads,
        "max_steps": cfg.train.max_steps,
        "steps_trained": done["step"],
        "train_seconds": round(done["train_seconds"], 1),
        "wall_seconds": round(done["wall_seconds"], 1),
        "images_seen": done["step"] * cfg.train.batch_size,
        "sampler": args.sampler,
        "sampler_steps": args.steps,
        "sample_seconds": round(sample_seconds, 1),
        "at_n": {k: report[k] for k in ("fld", "fld_train_test", "fld_noise_test", "class_entropy")}
        | {"n": args.n},
        **provenance("peer_quality.py", argv),
    }
    (args.out / "report.json").write_text(json.dumps(detail, indent=2) + "\n")
    update = {f"fld_ratio_uncond_diffusers{args.tag}": round(ratio, 3), f"peer_quality{args.tag}": detail}
    merge_results(update, args.results)
    print(
        f"diffusers, {done['step']} steps in {done['wall_seconds'] / 60:.1f} min: FLD {report['fld']:.2f} at "
        f"N = {args.n} (floor {report['fld_train_test']:.3f}, ratio {ratio:.1f}); grid {grid}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
