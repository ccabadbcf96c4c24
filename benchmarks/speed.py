"""Speed of our UNet against diffusers' and against this CPU's limit (issue 6, parts 2 and 3).

What is compared, with the same parameter count, batch, optimiser settings and precision on both sides:

- training: one optimiser step of OUR ENGINE as ``ddpm train`` runs it (``Trainer.train_step``: the loss
  of ``ddpm.training.make_loss_fn``, backward, gradient clipping, fused AdamW, the EMA update) against
  diffusers' idiomatic step (the loop of its ``train_unconditional.py`` example: ``add_noise``,
  ``unet(x_t, t).sample``, MSE, backward, clipping, AdamW, an LR-scheduler step, ``EMAModel.step``);
- sampling: our ``ddpm_sample`` with ``make_denoiser`` against diffusers' ``DDPMScheduler`` loop
  (``set_timesteps(K)``, ``unet(x, t).sample``, ``scheduler.step``), same batch and K, in inference mode.

The two sides are timed alternately (ours, diffusers, then diffusers, ours, …) in windows of ``--seconds``
after a warm-up; the figures are the medians over ``--repeats`` windows and the speed-ups the ratios of
the medians (ours / diffusers). bf16 is ``torch.autocast("cpu", dtype=torch.bfloat16)`` on both sides.

Against the machine: FLOPs per image counted with ``torch.utils.flop_counter`` (one forward for sampling,
forward + backward for training), the best ``torch.mm`` rate on square matrices with the same threads,
and the achieved fraction of that peak. Results are merged into ``benchmarks/results.json``.

    python benchmarks/speed.py                                    # the full run (10–15 minutes)
    python benchmarks/speed.py --threads 1 --repeats 2 --seconds 5 --precision fp32   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import statistics
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from record import RESULTS, merge_results, provenance
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ddpm.engine.device import resolve_precision
from ddpm.engine.trainer import Trainer
from ddpm.models import count_parameters
from ddpm.models.layers import num_groups
from ddpm.presets import get_preset
from ddpm.run import build_schedule, make_model
from ddpm.samplers import ddpm_sample, make_denoiser, make_timesteps
from ddpm.training import make_loss_fn


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- The diffusers twin of our UNet -----------------------------------------------------------------------


def diffusers_twin(kwargs: dict, image_size: int, channels: int, target: int) -> dict:
    """diffusers' ``UNet2DModel`` built like our UNet: the same levels, blocks per level, attention
    resolutions and heads, with its idiomatic blocks (DownBlock2D / AttnDownBlock2D, UpBlock2D /
    AttnUpBlock2D, a mid block with attention). The base width is searched near ours for the parameter
    count nearest ``target``; GroupNorm groups as ours at the narrowest width (≤ 32, ≥ 4 channels each).
    Returns the ``UNet2DModel`` config."""
    mult, heads = kwargs["channel_mult"], kwargs["num_heads"]
    sizes = [image_size]
    for _ in mult[1:]:
        sizes.append((sizes[-1] + 1) // 2)
    attention = [size in set(kwargs["attention_resolutions"]) for size in sizes]
    attn_width = [m for m, a in zip(mult, attention) if a] or [mult[-1]]
    best = None
    for base in range(kwargs["model_channels"] - 8, kwargs["model_channels"] + 9, 4):
        if base <= 0 or (base * max(attn_width)) % heads:
            continue
        config = dict(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(base * m for m in mult),
            layers_per_block=kwargs["num_res_blocks"],
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            attention_head_dim=base * max(attn_width) // heads,  # diffusers sets heads = width // head_dim
            norm_num_groups=num_groups(base, 32, 4),
            dropout=kwargs.get("dropout", 0.0),
        )
        n = count_parameters(UNet2DModel(**config))
        print(f"  diffusers candidate block_out_channels={config['block_out_channels']}: {n:,} parameters")
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (config, n)
    config, n = best
    if abs(n - target) > 0.05 * target:
        raise SystemExit(f"no diffusers UNet within 5 % of {target:,} parameters (best {n:,})")
    return config


# --- One training step on each side --------------------------------------------------------------------


def our_trainer(cfg, data: torch.Tensor, precision: str, run_dir: str) -> Trainer:
    """Our engine exactly as ``ddpm train`` builds it, on in-memory data."""
    cfg = copy.deepcopy(cfg)
    cfg.train.precision, cfg.train.device = precision, "cpu"
    schedule = build_schedule(cfg)
    torch.manual_seed(0)
    model = make_model(cfg)
    return Trainer(
        model, make_loss_fn(cfg, schedule, None), data, None, cfg.train, run_dir, log=lambda s: None
    )


class DiffusersTrainer:
    """diffusers' training step as in its ``examples/unconditional_image_generation/train_unconditional.py``
    (without accelerate, which adds nothing on one CPU process), with our optimiser settings."""

    def __init__(self, unet: UNet2DModel, cfg, data: torch.Tensor, precision: str):
        tc = cfg.train
        self.unet, self.data, self.batch, self.precision = unet.train(), data, tc.batch_size, precision
        self.scheduler = DDPMScheduler(num_train_timesteps=cfg.diffusion.T, beta_schedule="squaredcos_cap_v2")
        self.optimizer = torch.optim.AdamW(
            unet.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay
        )
        self.lr_scheduler = get_cosine_schedule_with_warmup(self.optimizer, tc.warmup_steps, tc.max_steps)
        # use_ema_warmup=False is our warm-up: decay = min(ema_decay, (1 + step) / (10 + step)).
        self.ema = EMAModel(unet.parameters(), decay=tc.ema_decay, use_ema_warmup=False)
        self.grad_clip = tc.grad_clip
        self.generator = torch.Generator().manual_seed(cfg.seed)  # the batches, noise and times

    def train_step(self) -> torch.Tensor:
        g = self.generator
        x0 = self.data[torch.randint(0, len(self.data), (self.batch,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (self.batch,), generator=g)
        x_t = self.scheduler.add_noise(x0, noise, t)
        with autocast(self.precision):
            pred = self.unet(x_t, t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        return loss.detach()


# --- Sampling on each side --------------------------------------------------------------------------------


def our_sampler(cfg, model, batch: int, steps: int, precision: str):
    schedule = build_schedule(cfg)
    timesteps = make_timesteps(schedule, steps)
    denoise = make_denoiser(
        lambda x, t: model(x, t), schedule, cfg.diffusion.prediction, cfg.diffusion.clip_x0
    )
    shape = (batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)

    def sample() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(shape, generator=g)
        with torch.inference_mode(), autocast(precision):
            return ddpm_sample(
                denoise, x_T, schedule, timesteps, variance=cfg.diffusion.variance, generator=g
            )

    return sample


def diffusers_sampler(cfg, unet: UNet2DModel, batch: int, steps: int, precision: str):
    """The loop of diffusers' ``DDPMPipeline.__call__`` (without the conversion to PIL images)."""
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.diffusion.T,
        beta_schedule="squaredcos_cap_v2",
        variance_type="fixed_small",
        clip_sample=cfg.diffusion.clip_x0 is not None,
        clip_sample_range=cfg.diffusion.clip_x0 or 1.0,
    )
    scheduler.set_timesteps(steps)
    shape = (batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)

    def sample() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g)
        with torch.inference_mode(), autocast(precision):
            for t in scheduler.timesteps:
                eps = unet(x, t).sample
                x = scheduler.step(eps, t, x, generator=g).prev_sample
        return x

    return sample


# --- Timing ---------------------------------------------------------------------------------------------


def throughput(fn, items_per_call: int, seconds: float) -> float:
    """Call ``fn`` until ``seconds`` have passed (at least once); items per second."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * items_per_call / elapsed


def alternate(ours, theirs, items: int, repeats: int, seconds: float, warmup: int, label: str) -> dict:
    """Warm both up, then time ours and theirs in turn, swapping the order every round (ABBA), so that a
    slow drift of the machine touches both sides alike."""
    for _ in range(warmup):
        ours()
        theirs()
    rates = {"ours": [], "diffusers": []}
    for r in range(repeats):
        order = [("ours", ours), ("diffusers", theirs)]
        for side, fn in order if r % 2 == 0 else order[::-1]:
            rates[side].append(throughput(fn, items, seconds))
        print(
            f"  {label} round {r + 1}/{repeats}: ours {rates['ours'][-1]:.1f}, "
            f"diffusers {rates['diffusers'][-1]:.1f} per s",
            flush=True,
        )
    med = {side: statistics.median(v) for side, v in rates.items()}
    return {
        "ours": med["ours"],
        "diffusers": med["diffusers"],
        "ratio": med["ours"] / med["diffusers"],
        "rounds": rates,
    }


# --- FLOPs and the matmul peak -----------------------------------------------------------------------------


# FlopCounterMode knows the CUDA attention kernels; the CPU one does the same arithmetic. (Attention at
# 7×7 is under 1 % of the UNet's FLOPs; it is counted for completeness.)
def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


SDPA_CPU = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def flops_per_image(forward, batch: int, image_shape: tuple) -> dict:
    """Counted FLOPs (multiply-add = 2) of one forward, and of forward + backward, per image."""
    x = torch.randn(batch, *image_shape)
    t = torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU) as counter, torch.no_grad():
        forward(x, t)
    fwd = counter.get_total_flops()
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU) as counter:
        forward(x, t).float().pow(2).mean().backward()
    return {"forward": fwd / batch, "train": counter.get_total_flops() / batch}


def matmul_peak(dtype: torch.dtype, sizes=(512, 1024, 2048, 4096), seconds: float = 1.0) -> dict:
    """GFLOP/s of ``torch.mm`` on square n × n matrices, for each n until one product takes over 2 s."""
    result = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        start = time.perf_counter()
        torch.mm(a, b)  # warm-up, and how long one product takes
        one_product = time.perf_counter() - start
        result[n] = throughput(functools.partial(torch.mm, a, b), 2 * n**3 / 1e9, seconds)
        if one_product > 2.0:
            break
    return result


# --- Main -----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--preset", default="mnist-unet", help="a preset whose model is the UNet")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per side (default 5)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of one timed window (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per side first (default 2)")
    p.add_argument("--sample-batch", type=int, default=100, help="images sampled at once (default 100)")
    p.add_argument("--sample-steps", type=int, default=10, help="denoising steps K in fp32 (default 10)")
    p.add_argument(
        "--bf16-sample-steps",
        type=int,
        default=1,
        help="K in bf16, which is slow on CPUs without native bf16",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON to merge the figures into")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    if cfg.model.name != "unet":
        raise SystemExit(
            f"--preset {args.preset}: its model is {cfg.model.name!r}; diffusers' twin needs the UNet"
        )
    if args.batch:
        cfg.train.batch_size = args.batch
    cfg.train.num_threads = args.threads
    precisions = [s.strip() for s in args.precision.split(",") if s.strip()]
    train_precision = resolve_precision(cfg.train.precision, torch.device("cpu"))
    image_shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    batch = cfg.train.batch_size
    print(f"{args.preset}: batch {batch}, {args.threads} threads, we train in {train_precision}")

    torch.manual_seed(0)
    ours_model = make_model(cfg)
    ours_params = count_parameters(ours_model)
    print(f"ours: {ours_params:,} parameters")
    twin_config = diffusers_twin(cfg.model.kwargs, cfg.data.image_size, cfg.data.channels, ours_params)

    def fresh_twin() -> UNet2DModel:
        torch.manual_seed(0)
        return UNet2DModel(**twin_config)

    twin_params = count_parameters(fresh_twin())
    print(
        f"diffusers: {twin_params:,} parameters ({twin_params / ours_params - 1:+.2%}), config {twin_config}"
    )

    print("counting FLOPs …", flush=True)
    twin = fresh_twin()
    flops = {
        "ours": flops_per_image(make_model(cfg), batch, image_shape),
        "diffusers": flops_per_image(lambda x, t: twin(x, t).sample, batch, image_shape),
    }
    print("measuring the matmul peak …", flush=True)
    peak = {"fp32": matmul_peak(torch.float32)}
    if "bf16" in precisions:
        peak["bf16"] = matmul_peak(torch.bfloat16)

    data = torch.rand(4096, *image_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    measured = {}
    with tempfile.TemporaryDirectory() as run_dir:
        for precision in precisions:
            print(f"{precision}: training …", flush=True)
            trainer = our_trainer(cfg, data, precision, run_dir)
            theirs = DiffusersTrainer(fresh_twin(), cfg, data, precision)
            train = alternate(
                trainer.train_step, theirs.train_step, batch, args.repeats, args.seconds, args.warmup, "train"
            )
            del trainer, theirs
            steps = args.sample_steps if precision == "fp32" else args.bf16_sample_steps
            print(f"{precision}: sampling {args.sample_batch} images × {steps} steps …", flush=True)
            torch.manual_seed(0)
            ours_sampler = our_sampler(cfg, make_model(cfg).eval(), args.sample_batch, steps, precision)
            theirs_sampler = diffusers_sampler(cfg, fresh_twin().eval(), args.sample_batch, steps, precision)
            sample = alternate(
                ours_sampler, theirs_sampler, args.sample_batch, args.repeats, args.seconds, 1, "sample"
            )
            sample["steps"] = steps
            sample["image_steps_per_s"] = {side: sample[side] * steps for side in ("ours", "diffusers")}
            measured[precision] = {"train_images_per_s": train, "sample_images_per_s": sample}

    peak_fp32 = max(peak["fp32"].values()) * 1e9
    headline = {}
    for precision, m in measured.items():
        suffix = "" if precision == train_precision else f"_{precision}"
        headline[f"train_speedup_vs_diffusers{suffix}"] = m["train_images_per_s"]["ratio"]
        headline[f"sample_speedup_vs_diffusers{suffix}"] = m["sample_images_per_s"]["ratio"]
    if "fp32" in measured:
        # Achieved fraction of the matmul peak: counted FLOPs per image × images per second ÷ peak.
        m = measured["fp32"]
        for side in ("ours", "diffusers"):
            prefix = "" if side == "ours" else "diffusers_"
            train_rate = m["train_images_per_s"][side]
            sample_rate = m["sample_images_per_s"]["image_steps_per_s"][side]
            headline[f"{prefix}train_peak_fraction"] = flops[side]["train"] * train_rate / peak_fp32
            headline[f"{prefix}sample_peak_fraction"] = flops[side]["forward"] * sample_rate / peak_fp32
    details = {
        **provenance("speed.py", argv),
        "threads": args.threads,
        "diffusers": diffusers.__version__,
        "preset": args.preset,
        "train_precision": train_precision,
        "batch": batch,
        "sample_batch": args.sample_batch,
        "repeats": args.repeats,
        "seconds": args.seconds,
        "parameters": {"ours": ours_params, "diffusers": twin_params},
        "setup": (
            "ours: Trainer.train_step (fused AdamW, foreach EMA: the engine's own choices) and ddpm_sample;"
            " diffusers: its train_unconditional example's step (torch.optim.AdamW defaults, EMAModel"
            " defaults) and DDPMPipeline's loop; same batch, lr, betas, weight decay, clipping, EMA decay"
        ),
        "diffusers_config": {k: list(v) if isinstance(v, tuple) else v for k, v in twin_config.items()},
        "flops_per_image": flops,
        "matmul_gflops": {dt: {str(n): g for n, g in sizes.items()} for dt, sizes in peak.items()},
        "peak_gflops": {dt: max(sizes.values()) for dt, sizes in peak.items()},
        "measured": measured,
    }
    if "fp32" in measured:
        # The same FLOPs as diffusers, 1.5× as fast: the fraction of the matmul peak that takes.
        details["peak_fraction_needed_for_1.5x"] = {
            what: 1.5 * headline[f"diffusers_{what}_peak_fraction"] for what in ("train", "sample")
        }

    results = merge_results({**headline, "speed": details}, args.out)
    print_table(headline, details)
    print(f"wrote {args.out}")
    return results


def print_table(headline: dict, d: dict) -> None:
    print(f"\n{d['cpu']}, {d['threads']} threads, torch {d['torch']}, diffusers {d['diffusers']}")
    print(f"parameters: ours {d['parameters']['ours']:,}, diffusers {d['parameters']['diffusers']:,}")
    print(f"{'precision':<10}{'measure':<26}{'ours':>10}{'diffusers':>11}{'ours/diff':>11}")
    for precision, m in d["measured"].items():
        tr, sa = m["train_images_per_s"], m["sample_images_per_s"]
        rows = [
            (f"train images/s (batch {d['batch']})", tr["ours"], tr["diffusers"], tr["ratio"]),
            (f"sample images/s (K={sa['steps']})", sa["ours"], sa["diffusers"], sa["ratio"]),
            (
                "sample image-steps/s",
                sa["image_steps_per_s"]["ours"],
                sa["image_steps_per_s"]["diffusers"],
                sa["ratio"],
            ),
        ]
        for name, a, b, r in rows:
            print(f"{precision:<10}{name:<26}{a:>10.1f}{b:>11.1f}{r:>11.2f}")
    f = d["flops_per_image"]
    for side in ("ours", "diffusers"):
        print(
            f"GFLOP per image, {side}: forward {f[side]['forward'] / 1e9:.3f},"
            f" training step {f[side]['train'] / 1e9:.3f}"
        )
    print("matmul peak GFLOP/s: " + ", ".join(f"{dt} {g:.1f}" for dt, g in d["peak_gflops"].items()))
    for key, value in headline.items():
        print(f"{key}: {value:.3f}")
    for what, fraction in d.get("peak_fraction_needed_for_1.5x", {}).items():
        print(f"{what}: 1.5× diffusers' speed would take {fraction:.2f} of the fp32 matmul peak")


if __name__ == "__main__":
    main()
