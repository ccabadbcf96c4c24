"""Where one training step goes, for our engine and for diffusers' twin (issue 6: what limits the speed).

Two views of the same step as ``benchmarks/speed.py`` times it, on random MNIST-shaped data in fp32:

1. phases: the wall time of the model's forward, gradient clipping, the optimiser and the EMA update
   inside ``Trainer.train_step`` and diffusers' step (timed by hooks, the steps themselves untouched);
   the rest of the step is the backward pass;
2. kernels: ``torch.profiler`` self time by kind of operator (convolutions forward and backward, group
   norm, attention, linear layers, the rest), with the convolutions' FLOPs (counted) per second of their
   own time, against the ``torch.mm`` peak.

From these it derives the Amdahl bound: were everything but our convolutions free, how much faster than
diffusers' whole step could our step be? Merged into ``benchmarks/results.json`` under ``"profile"``.

    python benchmarks/profile_train.py                 # 2 threads, 10 steps per side (about 2 minutes)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from record import RESULTS, merge_results, provenance
from speed import (
    DiffusersTrainer,
    UNet2DModel,
    count_parameters,
    diffusers_twin,
    matmul_peak,
    our_trainer,
)
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ddpm.presets import get_preset
from ddpm.run import make_model

KINDS = {  # operator name → kind; the first pattern contained in the name wins
    "convolution_backward": "convolution backward",
    "convolution": "convolution forward",  # mkldnn_convolution, _nnpack_spatial_convolution, …
    "group_norm": "group norm",
    "scaled_dot_product": "attention",
    "addmm": "linear",
    "aten::mm": "linear",
    "aten::bmm": "linear",
    "fused_adam": "optimiser (fused kernel)",
}


def kind_of(name: str) -> str:
    return next((kind for pattern, kind in KINDS.items() if pattern in name), "other")


class PhaseTimer:
    """Wall time of the parts of a training step, taken from outside the step: hooks around the model's
    forward and the optimiser's step, wrappers around gradient clipping and the EMA update. What is left
    of the step is the backward pass, plus drawing the batch and the loss (both tiny)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, owner, ema_method: str):
        self.seconds = defaultdict(float)
        self._start = {}
        model.register_forward_pre_hook(lambda *_: self._begin("forward"))
        model.register_forward_hook(lambda *_: self._end("forward"))
        optimizer.register_step_pre_hook(lambda *_: self._begin("optimiser"))
        optimizer.register_step_post_hook(lambda *_: self._end("optimiser"))
        setattr(owner, ema_method, self.wrap("EMA", getattr(owner, ema_method)))

    def _begin(self, name):
        self._start[name] = time.perf_counter()

    def _end(self, name):
        self.seconds[name] += time.perf_counter() - self._start.pop(name)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            self._begin(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self._end(name)

        return timed

    def run(self, step, steps: int) -> dict:
        """The average over ``steps`` calls of ``step``, per phase, in seconds per step."""
        clip = torch.nn.utils.clip_grad_norm_
        torch.nn.utils.clip_grad_norm_ = self.wrap("gradient clipping", clip)
        try:
            self.seconds.clear()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            total = time.perf_counter() - start
        finally:
            torch.nn.utils.clip_grad_norm_ = clip
        phases = {name: t / steps for name, t in self.seconds.items()}
        phases["backward and the rest"] = total / steps - sum(phases.values())
        phases["whole step"] = total / steps
        return phases


def conv_flops(model_fn, batch: int, shape: tuple) -> float:
    """Counted FLOPs of the convolutions (forward + backward) of one training step."""
    x, t = torch.randn(batch, *shape), torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        model_fn(x, t).float().pow(2).mean().backward()
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "convolution" in str(op))


def kernel_profile(step, steps: int) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    by_kind = defaultdict(float)
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    # Time in no operator at all: Python, the autograd engine's bookkeeping, the profiler itself.
    by_kind["outside operators"] = wall - sum(by_kind.values())
    return {"step_seconds": wall, "self_seconds_per_step": dict(by_kind)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist-unet")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="profiled steps per side (default 10)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    if args.batch:
        cfg.train.batch_size = args.batch
    cfg.train.num_threads = args.threads
    batch, shape = cfg.train.batch_size, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    target = count_parameters(make_model(cfg))
    twin_config = diffusers_twin(cfg.model.kwargs, cfg.data.image_size, cfg.data.channels, target)

    def fresh_twin() -> UNet2DModel:
        torch.manual_seed(0)
        return UNet2DModel(**twin_config)

    data = torch.rand(4096, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    peak = max(matmul_peak(torch.float32).values())
    twin = fresh_twin()
    flops = {
        "ours": conv_flops(make_model(cfg), batch, shape),
        "diffusers": conv_flops(lambda x, t: twin(x, t).sample, batch, shape),
    }
    result = {
        **provenance("profile_train.py", argv),
        "threads": args.threads,
        "batch": batch,
        "matmul_peak_gflops": peak,
    }
    with tempfile.TemporaryDirectory() as run_dir:
        ours = our_trainer(cfg, data, "fp32", run_dir)
        theirs = DiffusersTrainer(fresh_twin(), cfg, data, "fp32")
        sides = {
            "ours": (ours, PhaseTimer(ours.model, ours.optimizer, ours.ema, "update")),
            "diffusers": (theirs, PhaseTimer(theirs.unet, theirs.optimizer, theirs.ema, "step")),
        }
        for side, (trainer, timer) in sides.items():
            for _ in range(2):
                trainer.train_step()  # warm-up
            phase_seconds = timer.run(trainer.train_step, args.steps)
            kernels = kernel_profile(trainer.train_step, args.steps)
            self_seconds = kernels["self_seconds_per_step"]
            conv = self_seconds.get("convolution forward", 0) + self_seconds.get("convolution backward", 0)
            result[side] = {
                "phase_seconds": phase_seconds,
                **kernels,
                "convolution_seconds": conv,
                "convolution_share": conv / kernels["step_seconds"],
                "convolution_gflops": flops[side] / 1e9 / conv,
                "convolution_peak_fraction": flops[side] / 1e9 / conv / peak,
            }
    ours, theirs = result["ours"], result["diffusers"]
    # Were everything but our convolutions free, our step would take just their time.
    result["train_speedup_bound_amdahl"] = theirs["step_seconds"] / ours["convolution_seconds"]

    print(f"\n{args.threads} threads, batch {batch}, matmul peak {peak:.1f} GFLOP/s")
    print(f"{'phase (s per step)':<34}{'ours':>10}{'diffusers':>11}")
    for name in ours["phase_seconds"]:
        print(f"{name:<34}{ours['phase_seconds'][name]:>10.4f}{theirs['phase_seconds'][name]:>11.4f}")
    print(f"\n{'kernel self time (s per step)':<34}{'ours':>10}{'diffusers':>11}")
    kinds = sorted(set(ours["self_seconds_per_step"]) | set(theirs["self_seconds_per_step"]))
    for kind in kinds:
        a, b = ours["self_seconds_per_step"].get(kind, 0), theirs["self_seconds_per_step"].get(kind, 0)
        print(f"{kind:<34}{a:>10.4f}{b:>11.4f}")
    for side in ("ours", "diffusers"):
        r = result[side]
        print(
            f"{side}: convolutions take {r['convolution_share']:.0%} of the step and run at"
            f" {r['convolution_gflops']:.1f} GFLOP/s, {r['convolution_peak_fraction']:.0%} of the matmul peak"
        )
    print(
        "were everything but our convolutions free, our step would be at most"
        f" {result['train_speedup_bound_amdahl']:.2f}× as fast as diffusers'"
    )

    results = merge_results({"profile": result}, args.out)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
