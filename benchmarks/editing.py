"""What a trained MNIST run does beyond sampling, measured: inpainting, SDEdit, inversion, likelihood.

    python benchmarks/editing.py --run runs/mnist-unet --n 1000 [--nll-n 200] [--out report.json]

1. Inpainting: the first N test digits with their lower half masked, completed by RePaint (``--steps``,
   ``--jump-length``, ``--resample``) and by plain replacement (the same steps, no resampling). For each:
   FLD of the completions against the test set (with its floor, N real training images) and the fraction
   LeNet assigns to the digit's true label.
2. SDEdit at each of ``--strengths``: FLD of the edits and LeNet's agreement with the input's label.
3. DDIM inversion at 20, 50 and 100 steps (and ``--refine`` fixed-point iterations) of N test digits and
   of N samples the model drew by DDIM (η = 0) with the same steps: the mean absolute and the largest
   reconstruction error after decoding again, and for the samples the error of the recovered noise.
4. NLL by the probability-flow ODE and the variational bound, in bits/dim, on ``--nll-n`` test digits,
   with standard errors and seconds (``ddpm nll``).

The report (JSON) goes to ``--out``, by default ``RUN/eval/editing-n<N>.json``. Nothing here is specific
to one run: it needs an MNIST (or Fashion-MNIST) image run folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddpm import editing
from ddpm.data.images import load, to_tensor
from ddpm.edit import check_image_run, decode, invert
from ddpm.evaluate import EVAL_DIR, ReferenceSet, likelihood_run, measure_samples, quantize
from ddpm.fileio import atomic_write_text
from ddpm.metrics.lenet import lenet_predict
from ddpm.run import load_run, run_denoiser, sample_timesteps, sampling_config
from ddpm.samplers import get_sampler, sampler_options


def batches(x: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield start, x[start : start + size]


def measured(x: torch.Tensor, labels: torch.Tensor, reference: ReferenceSet) -> dict:
    """FLD (with its floor) of images ``x`` and the fraction LeNet assigns to ``labels``."""
    x = quantize(x.float().cpu())
    report = measure_samples(x, reference, progress=False)
    agree = (torch.from_numpy(lenet_predict(reference.classifier.model, x)) == labels).float().mean()
    return {"fld": report["fld"], "fld_train_test": report["fld_train_test"], "label_agreement": agree.item()}


@torch.no_grad()
def inpainting(run, images, labels, reference, args) -> dict:
    cfg = sampling_config(run.cfg, sampler="ddpm", steps=args.steps)
    keep = torch.ones(1, 1, *images.shape[-2:], dtype=torch.bool, device=images.device)
    keep[..., images.shape[-2] // 2 :, :] = False
    denoise = run_denoiser(cfg, run.model, run.schedule)
    result = {}
    for name, resample in (("repaint", args.resample), ("replacement", 1)):
        t0, out = time.perf_counter(), []
        g = torch.Generator(images.device).manual_seed(0)
        for _, x0 in batches(images, args.batch_size):
            x_T = torch.randn(x0.shape, generator=g, device=x0.device)
            out.append(
                editing.repaint(
                    denoise,
                    x_T,
                    run.schedule,
                    sample_timesteps(cfg, run.schedule),
                    x0,
                    keep,
                    jump_length=args.jump_length,
                    jump_n_sample=resample,
                    variance=cfg.diffusion.variance,
                    generator=g,
                )  # fmt: skip
            )
        result[name] = {**measured(torch.cat(out), labels, reference), "seconds": time.perf_counter() - t0}
        print(f"inpainting, {name}: {result[name]}")
    return result


@torch.no_grad()
def sdedit_sweep(run, images, labels, reference, args) -> list[dict]:
    cfg = sampling_config(run.cfg, sampler=args.sampler, steps=args.sdedit_steps)
    denoise = run_denoiser(cfg, run.model, run.schedule)
    sampler = get_sampler(cfg.sample.sampler)
    options = sampler_options(cfg.sample.sampler, variance=cfg.diffusion.variance, eta=cfg.sample.eta)
    rows = []
    for strength in args.strengths:
        t0, out = time.perf_counter(), []
        g = torch.Generator(images.device).manual_seed(0)
        for _, x0 in batches(images, args.batch_size):
            out.append(
                editing.sdedit(
                    denoise,
                    x0,
                    run.schedule,
                    sample_timesteps(cfg, run.schedule),
                    strength,
                    sampler=sampler,
                    generator=g,
                    **options,
                )  # fmt: skip
            )
        row = {"strength": strength, **measured(torch.cat(out), labels, reference)}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"SDEdit: {row}")
    return rows


def inversion(run, images, args) -> list[dict]:
    """Decode(invert(x0)) − x0 for test digits, and for samples the model drew itself by DDIM (η = 0) from
    seeded noise with the same steps, where the inversion should also give back that noise."""
    rows = []
    for steps in args.inversion_steps:
        cfg = sampling_config(run.cfg, steps=steps)
        for of in ("test digits", "DDIM samples"):
            t0, errors, noise_errors = time.perf_counter(), [], []
            g = torch.Generator(images.device).manual_seed(0)
            for _, x0 in batches(images, args.batch_size):
                if of == "DDIM samples":
                    x_T = torch.randn(x0.shape, generator=g, device=x0.device)
                    x0 = decode(cfg, run.model, run.schedule, x_T, progress=False)
                inverted = invert(cfg, run.model, run.schedule, x0, refine=args.refine, progress=False)
                again = decode(cfg, run.model, run.schedule, inverted, progress=False)
                errors.append((again - x0).abs().cpu())
                if of == "DDIM samples":
                    noise_errors.append((inverted - x_T).abs().cpu())
            errors = torch.cat(errors)
            row = {"of": of, "steps": steps, "refine": args.refine, "mean_abs_error": errors.mean().item()}
            row.update(max_abs_error=errors.max().item())
            if noise_errors:
                row.update(noise_mean_abs_error=torch.cat(noise_errors).mean().item())
            row.update(seconds=time.perf_counter() - t0)
            rows.append(row)
            print(f"inversion: {row}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="an MNIST or Fashion-MNIST run folder")
    p.add_argument("--n", type=int, default=1000, help="test digits for inpainting, SDEdit and inversion")
    p.add_argument("--nll-n", type=int, default=200, help="test digits for the likelihoods (0: skip)")
    p.add_argument("--steps", type=int, default=100, help="RePaint's reverse steps")
    p.add_argument("--jump-length", type=int, default=10)
    p.add_argument("--resample", type=int, default=10)
    p.add_argument("--sampler", default="ddpm", help="SDEdit's sampler")
    p.add_argument("--sdedit-steps", type=int, default=100, help="SDEdit's steps for strength 1")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0])
    p.add_argument("--inversion-steps", type=int, nargs="+", default=[20, 50, 100])
    p.add_argument("--refine", type=int, default=0, help="fixed-point iterations a DDIM inversion step")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, help="the report (default RUN/eval/editing-n<N>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run = load_run(args.run)
    check_image_run(run.cfg, "benchmarks/editing.py")
    device = next(run.model.parameters()).device
    images, labels = load(run.cfg.data.name, "test", root=run.cfg.data.root)
    images = to_tensor(images[: args.n]).to(device)
    labels = torch.as_tensor(labels[: args.n])
    reference = ReferenceSet.load(run.cfg.data.name, run.cfg.data.root, progress=False)
    report = {"run": str(args.run), "checkpoint_step": run.step, "n": args.n}
    report["inpainting"] = inpainting(run, images, labels, reference, args)
    report["sdedit"] = sdedit_sweep(run, images, labels, reference, args)
    report["inversion"] = inversion(run, images, args)
    if args.nll_n:
        report["likelihood"] = likelihood_run(
            args.run, n=args.nll_n, batch_size=args.batch_size, progress=False
        )
        print(f"likelihood: {report['likelihood']}")
    report["seconds"] = time.perf_counter() - t0
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out = args.out or args.run / EVAL_DIR / f"editing-n{args.n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
