"""Quality at a CPU budget: train a recipe for a fixed wall-clock time, then measure it with FLD.

    python benchmarks/quality.py --preset mnist-time --minutes 60 --out runs/q-uncond --key uncond
    python benchmarks/quality.py --preset mnist-cond --minutes 60 --out runs/q-cond --key cond --guidance 2

1. Trains (or resumes) ``--out`` with the preset and the ``--set`` overrides, stopping at ``--minutes`` of
   wall time (``train.max_minutes``; ``--max-steps`` is the horizon of the cosine learning rate).
2. Samples ``--n`` images with ``--sampler`` at ``--steps`` steps (EMA weights, 8-bit, as ``ddpm eval``)
   and measures FLD, and the floor (FLD of as many real training images) at the same N.
3. On ``--full-n`` samples, the same sampler and the full-T DDPM sampler: ``nfe20_over_full`` is the ratio of
   their FLDs at the same N (the full-T sampler is T network evaluations per image, too slow for 10,000).
4. Merges ``fld_ratio_<key>`` (FLD / floor at N), ``nfe20_over_full_<key>`` and the details under
   ``quality.<key>`` into ``benchmarks/results.json``.

Every report also lands in ``RUN/eval/`` as ``ddpm eval`` writes it, so any figure can be re-derived.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from record import RESULTS, merge_results, provenance

from ddpm.config import Config, apply_overrides
from ddpm.engine import checkpoint as ckpt
from ddpm.evaluate import ReferenceSet, evaluate_run
from ddpm.presets import get_preset
from ddpm.training import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--out", required=True, type=Path, help="the run folder (resumed if it exists)")
    p.add_argument("--key", required=True, help="uncond or cond: the suffix of the result keys")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, help="cosine horizon (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--full-n", type=int, default=1000, help="samples for the full-T comparison (0: skip it)")
    p.add_argument("--sampler", default="dpmpp2m-sde")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--spacing", help="which steps (default: the run's, as ddpm eval)")
    p.add_argument("--ema-sigma-rel", type=float, help="measure the post-hoc EMA of this length σ_rel")
    p.add_argument("--guidance", type=float)
    p.add_argument(
        "--guide", type=Path, help="autoguidance by this weaker model (a run or checkpoint folder)"
    )
    p.add_argument(
        "--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"), help="guide for σ in (LO, HI]"
    )
    p.add_argument(
        "--skip-train",
        action="store_true",
        help="measure the run as it is (reading back a report of the same settings already in RUN/eval)",
    )
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = apply_overrides(get_preset(args.preset), args.set)
    cfg.train.max_minutes = args.minutes
    cfg.train.num_threads = args.threads
    if args.max_steps:
        cfg.train.max_steps = args.max_steps
    t0 = time.perf_counter()
    trained = None if args.skip_train else train(cfg, args.out)
    train_wall = time.perf_counter() - t0

    run_cfg = Config.load(args.out / "config.json")
    reference = ReferenceSet.load(run_cfg.data.name, run_cfg.data.root)  # loaded once for the three
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    common = dict(
        guidance=args.guidance,
        guide=args.guide,
        guidance_interval=interval,
        ema_sigma_rel=args.ema_sigma_rel,
        progress=True,
        reference=reference,
        reuse=args.skip_train,  # a run measured as it is: a report of the same settings is read back
    )
    fast_sampler = dict(sampler=args.sampler, steps=args.steps, spacing=args.spacing)
    main_report = evaluate_run(args.out, n=args.n, **fast_sampler, **common)
    fast = full = None
    if args.full_n:
        fast = evaluate_run(args.out, n=args.full_n, **fast_sampler, **common)
        T = run_cfg.diffusion.T
        full = evaluate_run(args.out, n=args.full_n, sampler="ddpm", steps=T, **common)
    state = ckpt.load_state(ckpt.latest_checkpoint(args.out))  # the checkpoint evaluate_run measured

    keep = ("fld", "fld_train_test", "fld_noise_test", "class_entropy", "precision", "n", "sample_seconds")
    detail = {
        "preset": args.preset,
        "overrides": args.set,
        "config": run_cfg.to_dict(),  # as trained: a preset may change after the run
        "minutes": run_cfg.train.max_minutes,  # as the run was trained (also with --skip-train)
        "threads": run_cfg.train.num_threads,
        "max_steps": run_cfg.train.max_steps,
        "steps_trained": state["step"],
        "train_seconds": state["train_seconds"],
        "train_wall_seconds_this_call": None if trained is None else round(train_wall, 1),
        "images_seen": state.get("images_seen"),
        "sampler": args.sampler,
        "sampler_steps": args.steps,
        "spacing": main_report["spacing"],  # as resolved (the run's when not given)
        "ema_sigma_rel": args.ema_sigma_rel,
        # as resolved: a run with its own guide (sample.guide_at) is autoguided without --guidance
        "guidance": main_report.get("guidance"),
        "guide": main_report.get("guide"),
        "guide_step": main_report.get("guide_step"),
        "guidance_interval": main_report.get("guidance_interval"),
        "network_evaluations": main_report.get("network_evaluations"),
        "at_n": {k: main_report.get(k) for k in keep},
        "fast_at_full_n": fast and {k: fast.get(k) for k in keep},
        "full_ddpm_at_full_n": full and {k: full.get(k) for k in keep},
        **provenance("quality.py", argv),
    }
    ratio = main_report["fld"] / main_report["fld_train_test"]
    update = {f"fld_ratio_{args.key}": round(ratio, 3), "quality": {args.key: detail}}
    floor = main_report["fld_train_test"]
    print(f"{args.key}: FLD {main_report['fld']:.2f} at N = {args.n} (floor {floor:.3f}, ratio {ratio:.1f})")
    if full is not None:
        nfe_ratio = fast["fld"] / full["fld"]
        update[f"nfe20_over_full_{args.key}"] = round(nfe_ratio, 3)
        if args.key == "uncond":  # the headline figure of the issue is the unconditional one
            update["nfe20_over_full"] = update["nfe20_over_full_uncond"]
        print(
            f"{args.sampler} {args.steps} steps / DDPM {full['steps']} steps at N = {args.full_n}: "
            f"{fast['fld']:.2f} / {full['fld']:.2f} = {nfe_ratio:.3f}"
        )
    merge_results(update, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
