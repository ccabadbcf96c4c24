"""The ``ddpm`` command line: a thin layer over :mod:`ddpm.run`, :mod:`ddpm.edit`, :mod:`ddpm.evaluate` and
:mod:`ddpm.export`.

Every refusal is one line on stderr and a non-zero exit, with nothing overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ddpm import plotting, run
from ddpm.config import Config, ConfigError, apply_overrides, is_interval
from ddpm.data import IMAGE_SETS
from ddpm.engine import checkpoint as ckpt
from ddpm.engine import posthoc_ema
from ddpm.engine.distributed import PeerFailed
from ddpm.fileio import atomic_path, check_writable
from ddpm.likelihood import ATOL, RTOL, TRACES
from ddpm.metrics.inception import InceptionError
from ddpm.presets import PRESETS, get_preset
from ddpm.samplers import SAMPLERS, SPACINGS, get_sampler


def _config_from_args(args) -> Config:
    source = args.preset
    if source in PRESETS:
        cfg = get_preset(source)
    elif Path(source).is_file():
        cfg = run.load_config(Path(source))
    else:
        raise ConfigError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
    cfg = apply_overrides(cfg, args.set or [])
    if args.seed is not None:
        cfg.seed = args.seed
    if args.max_steps is not None:
        cfg.train.max_steps = args.max_steps
    if args.max_minutes is not None:
        cfg.train.max_minutes = args.max_minutes
    if args.fit_horizon:
        cfg.train.fit_horizon = True
    return cfg


def cmd_train(args) -> int:
    from ddpm.training import train

    cfg, out = _config_from_args(args), Path(args.out)
    metrics = train(cfg, out, restart=args.restart)
    if metrics is None:  # a rank other than 0 of a torchrun job
        return 0
    picture = "grid.png" if run.is_image(cfg) else "points.png"
    step = metrics["step"]
    posthoc = cfg.train.posthoc_ema
    snapshots = ", posthoc-ema/" if posthoc else ""
    folders = f"checkpoints/{ckpt.step_name(step)}{snapshots}, metrics.json, samples/"
    wrote = f"step {step} of {cfg.train.max_steps} ({folders})"
    ema = " [--ema-sigma-rel S]" if posthoc else ""
    print(f"wrote {out}: {wrote}; next: ddpm sample {out} --out {picture}{ema}")
    if args.json:
        print(json.dumps(metrics))
    return 0


def cmd_sample(args) -> int:
    loaded = run.load_run(
        Path(args.run), weights=args.weights, device=args.device, ema_sigma_rel=args.ema_sigma_rel
    )
    cfg = run.sampling_config(
        loaded.cfg, sampler=args.sampler, steps=args.steps, spacing=args.spacing, **_options(args)
    )
    label, nrow = args.label, None
    if label == "all":
        label = run.rows_of_classes(cfg, args.n)
        nrow = args.n // cfg.model.num_classes
    guide = args.guide and Path(args.guide)
    guided = run.guidance_of(Path(args.run), cfg, args.guidance, guide, args.device, _guidance_interval(args))
    run.check_labels(cfg, label, guided.weight, guide=guided.guide is not None)
    out, gif = Path(args.out), Path(args.gif) if args.gif else None
    _check_writable(out, (".png", ".npy"), "--out")
    if gif:
        _check_writable(gif, (".gif",), "--gif")
    image = run.is_image(cfg)
    frames = run.ReverseFrames.about(60, cfg, keep=64 if image else 2000) if gif else None
    x = run.sample(
        cfg,
        loaded.model,
        loaded.schedule,
        args.n,
        seed=args.seed,
        label=label,
        callback=frames,
        guidance=guided.weight,
        guide=guided.guide,
        guidance_interval=guided.interval,
    ).cpu()
    write_samples(out, x, f"{args.n} samples, step {loaded.step}", nrow=nrow)
    if guided.weight:
        where = "" if guided.interval is None else " for σ in ({:g}, {:g}]".format(*guided.interval)
        how = f"w = {guided.weight:g}{where}; --guidance 0 samples without it"
        if guided.guide is not None:
            print(f"autoguided by {guided.folder} ({how})")
        elif args.guidance is None:
            print(f"guided as the run's config says ({how})")
    if gif:
        if image:
            plotting.grid_gif(gif, frames.states)
        else:
            plotting.points_gif(gif, frames.states, [f"t = {t}" for t in frames.t])
    print(f"wrote {out}" + (f" and {gif}" if gif else "") + _posthoc_note(loaded.posthoc))
    return 0


def write_samples(out: Path, x: torch.Tensor, title: str = "", nrow: int | None = None) -> None:
    """Write samples (or edits) after checking they are finite: ``.npy`` the array in the model's [−1, 1]
    space, ``.png`` a grid of images (``nrow`` a row; square by default) or a scatter of 2-D points."""
    x = run.check_finite(x.detach().float().cpu())
    if out.suffix == ".npy":
        with atomic_path(out) as tmp:
            np.save(tmp, x.numpy())
    elif x.ndim == 4:
        plotting.save_grid(out, x, nrow=nrow or math.ceil(math.sqrt(len(x))))
    else:
        plotting.save_scatter(out, x, title=title)


def _load_for_edit(args, command: str, **sampling):
    """The run (EMA, or the weights asked for) with its sampling settings changed as asked; images only."""
    from ddpm import edit

    loaded = run.load_run(
        Path(args.run), weights=args.weights, device=args.device, ema_sigma_rel=args.ema_sigma_rel
    )
    cfg = run.sampling_config(loaded.cfg, **sampling)
    edit.check_image_run(cfg, command)
    return loaded, cfg


def cmd_inpaint(args) -> int:
    from ddpm import edit

    loaded, cfg = _load_for_edit(args, "inpaint", steps=args.steps, spacing=args.spacing)
    run.check_labels(cfg, args.label, args.guidance)
    out = Path(args.out)
    _check_writable(out, (".png", ".npy"), "--out")
    image = edit.read_image(Path(args.image), cfg)
    keep = edit.read_mask(Path(args.mask), image)
    x = edit.inpaint(
        cfg, loaded.model, loaded.schedule, image, keep, n=args.n, seed=args.seed, label=args.label,
        guidance=args.guidance, jump_length=args.jump_length, jump_n_sample=args.resample,
    )  # fmt: skip
    write_samples(out, x)
    print(f"wrote {out}: {args.n} completion{'s' * (args.n > 1)}{_posthoc_note(loaded.posthoc)}")
    return 0


def cmd_edit(args) -> int:
    from ddpm import edit
    from ddpm.editing import sdedit_start

    loaded, cfg = _load_for_edit(
        args, "edit", sampler=args.sampler, steps=args.steps, spacing=args.spacing, eta=args.eta
    )
    run.check_labels(cfg, args.label, args.guidance)
    try:
        sdedit_start(loaded.schedule, args.strength)
    except ValueError as e:
        raise run.RunError(f"--strength {args.strength:g}: {e}") from None
    out = Path(args.out)
    _check_writable(out, (".png", ".npy"), "--out")
    image = edit.read_image(Path(args.image), cfg)
    x = edit.edit(
        cfg, loaded.model, loaded.schedule, image, args.strength, n=args.n, seed=args.seed,
        label=args.label, guidance=args.guidance,
    )  # fmt: skip
    write_samples(out, x)
    print(f"wrote {out}: {args.n} edit{'s' * (args.n > 1)} at strength {args.strength:g}")
    return 0


def cmd_invert(args) -> int:
    from ddpm import edit

    loaded, cfg = _load_for_edit(args, "invert", steps=args.steps, spacing=args.spacing)
    out = Path(args.out)
    _check_writable(out, (".npy", ".png"), "--out")
    recon = Path(args.reconstruct) if args.reconstruct else None
    if recon:
        _check_writable(recon, (".png", ".npy"), "--reconstruct")
    images = edit.read_image(Path(args.image), cfg)
    x_T = edit.invert(cfg, loaded.model, loaded.schedule, images, refine=args.refine)
    rebuilt = edit.decode(cfg, loaded.model, loaded.schedule, x_T) if recon else None
    write_samples(out, x_T)
    if recon:
        write_samples(recon, rebuilt)
        error = (rebuilt.cpu() - images).abs().max().item()
        print(f"wrote {out} and {recon} (largest reconstruction error {error:.3g})")
    else:
        steps = run.sample_steps(cfg)
        print(f"wrote {out}: x_T of {len(images)} image{'s' * (len(images) > 1)}, {steps} DDIM steps")
    return 0


def cmd_interpolate(args) -> int:
    from ddpm import edit
    from ddpm.editing import slerp_path

    loaded, cfg = _load_for_edit(args, "interpolate", steps=args.steps, spacing=args.spacing)
    if args.frames < 2:
        raise run.RunError(f"--frames {args.frames}: an interpolation needs at least 2")
    out = Path(args.out)
    _check_writable(out, (".png", ".npy"), "--out")
    if args.images:
        pair = torch.cat([edit._one(edit.read_image(Path(p), cfg), f"--images {p}") for p in args.images])
        z = edit.invert(cfg, loaded.model, loaded.schedule, pair, refine=args.refine).cpu()
    else:
        z = torch.cat([edit.seed_noise(cfg, seed) for seed in args.seeds])
    frames = edit.decode(cfg, loaded.model, loaded.schedule, slerp_path(z[:1], z[1:], args.frames))
    write_samples(out, frames, nrow=args.frames)
    print(f"wrote {out}: {args.frames} frames")
    return 0


NLL_ROWS = (
    ("nll_bits_per_dim", "NLL, ODE (bits/dim)"),
    ("vlb_bits_per_dim", "variational bound (bits/dim)"),
    ("vlb_prior", "  its prior term L_T"),
    ("vlb_decoder", "  its decoder term L_0"),
    ("data", "data"),
    ("n", "n"),
    ("trace", "trace estimator"),
    ("ode_seconds", "ODE seconds"),
    ("vlb_seconds", "bound seconds"),
    ("path", "report"),
)


def cmd_nll(args) -> int:
    from ddpm.evaluate import likelihood_run

    report = likelihood_run(
        Path(args.run), n=args.n, batch_size=args.batch_size, seed=args.seed, trace=args.trace,
        rtol=args.rtol, atol=args.atol, vlb=not args.no_vlb, device=args.device,
        ema_sigma_rel=args.ema_sigma_rel,
    )  # fmt: skip
    for key, label in NLL_ROWS:
        value = report.get(key)
        if value is None:
            continue
        se = report.get(f"{key}_se")
        shown = (
            f"{value:.4f} ± {se:.4f} (standard error)"
            if se is not None
            else (f"{value:.4g}" if isinstance(value, float) else str(value))
        )
        print(f"{label:>29}: {shown}")
    print(f"{'ODE evaluations a batch':>29}: {', '.join(map(str, report['ode_nfe']))}")
    if args.json:
        print(json.dumps(report))
    return 0


def _posthoc_note(posthoc) -> str:
    """What a post-hoc EMA is made of, for the line that says what was written."""
    if posthoc is None:
        return ""
    return (
        f" (post-hoc EMA σ_rel {posthoc.sigma_rel:g} at step {posthoc.step}, from {len(posthoc.snapshots)}"
        f" snapshots; its profile is matched within {posthoc.profile_error:.1%})"
    )


def _check_writable(path: Path, suffixes: tuple[str, ...], flag: str) -> None:
    """Refuse an output file before any work is done: a known suffix, in a folder that takes a new file."""
    if path.suffix.lower() not in suffixes:
        raise run.RunError(f"{flag} {path}: write a {' or '.join(suffixes)} file")
    if path.is_dir():
        raise run.RunError(f"{flag} {path}: is a folder, expected a file name")
    if not path.parent.is_dir():
        raise run.RunError(f"{flag} {path}: {path.parent} is not a folder")
    try:
        check_writable(path.parent)
    except OSError as e:
        raise run.RunError(f"{flag} {path}: cannot write in {path.parent} ({e.strerror})") from None


def _final_metrics(path: Path) -> dict | None:
    """The run's ``metrics.json``, or None when it is missing or unreadable (said in one line on stderr:
    the metrics are a report, and a damaged one should not hide the checkpoint's information)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        print(
            f"ddpm: warning: {path} is not readable JSON ({type(e).__name__}); metrics left out",
            file=sys.stderr,
        )
        return None


def cmd_info(args) -> int:
    from ddpm.export import provenance

    run_dir = Path(args.run)
    loaded = run.load_run(run_dir, device="cpu")
    latest = loaded.checkpoint
    state = ckpt.load_state(latest)
    exported = provenance(run_dir)
    info = {
        "run": str(run_dir),
        "step": state["step"],
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "weights_tensors_sha256": None  # an export keeps the EMA alone
        if exported
        else ckpt.tensors_sha256(ckpt.load_tensors(latest / "model.safetensors")),
        "ema_tensors_sha256": ckpt.tensors_sha256(ckpt.load_tensors(latest / "ema.safetensors")),
        "export": exported,
        "world_size": state.get("world_size", 1),
        "posthoc_ema": _posthoc_info(run_dir, loaded.cfg),
        "train_seconds": state.get("train_seconds"),
        "checkpoint": latest.name,
        "metrics": _final_metrics(run_dir / "metrics.json"),
        "config": loaded.cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    for key in ("run", "checkpoint", "step", "parameters", "world_size"):
        print(f"{key:>22}: {info[key]}")
    if info["train_seconds"] is not None:
        print(f"{'train_seconds':>22}: {info['train_seconds']:.1f}")
    for key in ("weights_tensors_sha256", "ema_tensors_sha256"):
        print(f"{key:>22}: {info[key] or 'none (an export keeps the EMA alone)'}")
    print(f"{'':>22}  (SHA-256 of the tensors' names, shapes and values: equal iff the weights are)")
    if exported:
        print(
            f"{'export':>22}: of {exported.get('exported_from')} ({exported.get('checkpoint')}),"
            f" {exported.get('date')}; {exported.get('weights')}"
        )
    if info["posthoc_ema"]:
        kept, steps = info["posthoc_ema"]["sigma_rel"], info["posthoc_ema"]["snapshot_steps"]
        span = f", steps {steps[0]}…{steps[-1]}" if steps else ""
        print(f"{'posthoc_ema':>22}: σ_rel {', '.join(f'{s:g}' for s in kept)}; {len(steps)} snapshots{span}")
        print(f"{'':>22}  (an EMA of any length σ_rel S: ddpm sample {run_dir} --ema-sigma-rel S)")
    if info["metrics"]:
        print(
            f"{'metrics':>22}: "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info["metrics"].items()
            )
        )
        if "nll_bits_per_dim" in info["metrics"]:
            print(
                f"{'':>22}  (nll_bits_per_dim bounds a density of continuous 2-D points: unlike the"
                " bits of discrete pixels, it can be negative)"
            )
    print(f"{'config':>22}: " + json.dumps(info["config"], indent=2).replace("\n", "\n" + " " * 24))
    return 0


def _posthoc_info(run_dir: Path, cfg: Config) -> dict | None:
    """The power EMAs the run keeps for post-hoc EMA and the steps of their snapshots, or None (an export
    keeps none)."""
    if not cfg.train.posthoc_ema or run.is_export(run_dir):
        return None
    folders = ckpt.list_step_folders(posthoc_ema.snapshot_dir(run_dir))
    steps = [int(p.name[len(ckpt.PREFIX) :]) for p in folders]
    return {"sigma_rel": list(cfg.train.posthoc_ema), "snapshot_steps": steps}


def cmd_export(args) -> int:
    from ddpm.export import export_run

    done = export_run(Path(args.run), Path(args.out), fp16=args.fp16, sample_settings=args.set)
    out = done.out
    weights = f"checkpoints/{ckpt.step_name(done.step)}/ema.safetensors"  # not the guide's beside it
    reports = sum(name.startswith("eval/") and name.endswith(".json") for name in done.sizes)
    reports = f"{reports or 'no'} eval report{'s' * (reports != 1)}"
    print(
        f"wrote {out}: {_megabytes(done.total)} in {len(done.sizes)} files: the EMA weights at step"
        f" {done.step} ({weights}, {_megabytes(done.sizes[weights])}), config.json, {reports}, export.json,"
        " SHA256SUMS"
    )
    if args.set:
        changed = ", ".join(args.set)
        print(f"it samples with {changed} unless a call says otherwise (export.json: config_changes)")
    print(f"next: ddpm sample {out} --n 64 --out grid.png; check it: (cd {out} && sha256sum -c SHA256SUMS)")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def cmd_data_fetch(args) -> int:
    from ddpm.data import images

    for name in args.names:
        folder = images.fetch(name, root=args.root, source_dir=args.source, allow_apt=not args.no_apt)
        print(f"{name}: verified in {folder}")
    return 0


EVAL_ROWS = (
    ("fld", "FLD (samples vs test)"),
    ("fld_train_test", "FLD floor (train vs test)"),
    ("fld_noise_test", "FLD noise (noise vs test)"),
    ("fid", "FID (Inception)"),
    ("class_entropy", "class entropy (nats)"),
    ("precision", "precision"),
    ("sampler", "sampler"),
    ("steps", "steps"),
    ("network_evaluations", "network evaluations"),
    ("guidance", "guidance"),
    ("guide", "guided by"),
    ("guidance_interval", "guidance interval (σ)"),
    ("ema_sigma_rel", "post-hoc EMA σ_rel"),
    ("ema_profile_error", "its profile's error"),
    ("n", "n"),
    ("seed", "seed"),
    ("sample_seconds", "sampling seconds"),
    ("seconds", "seconds"),
    ("path", "report"),
)


def cmd_eval(args) -> int:
    from ddpm.evaluate import evaluate_run

    report = evaluate_run(
        Path(args.run),
        n=args.n,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        spacing=args.spacing,
        fid=args.fid,
        batch_size=args.batch_size,
        device=args.device,
        name=args.name,
        ema_sigma_rel=args.ema_sigma_rel,
        log=lambda message: print(message, file=sys.stderr),
        guide=Path(args.guide) if args.guide else None,
        guidance_interval=_guidance_interval(args),
        **_options(args),
    )
    for key, label in EVAL_ROWS:
        if report.get(key) is not None:
            value = report[key]
            print(f"{label:>27}: {value:.4g}" if isinstance(value, float) else f"{label:>27}: {value}")
    if report.get("recall"):
        recall = ", ".join("-" if r is None else f"{r:.3f}" for r in report["recall"])
        print(f"{'recall by class':>27}: {recall}")
    print(f"{'class histogram':>27}: " + ", ".join(f"{p:.3f}" for p in report["class_histogram"]))
    if args.json:
        print(json.dumps(report))
    return 0


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} {text!r}: expected positive integers")
    return values


def cmd_sweep(args) -> int:
    from ddpm.evaluate import sweep_run

    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    try:
        if not samplers:
            raise ValueError(f"choose from {', '.join(SAMPLERS)}")
        for name in samplers:
            get_sampler(name)
    except ValueError as e:
        raise ConfigError(f"--samplers {args.samplers!r}: {e}") from None
    spacings = tuple(s.strip() for s in args.spacings.split(",") if s.strip())
    if not spacings or not set(spacings) <= set(SPACINGS):
        raise ConfigError(f"--spacings {args.spacings!r}: choose from {', '.join(SPACINGS)}")
    result = sweep_run(
        Path(args.run),
        n=args.n,
        full_n=args.full_n,
        samplers=samplers,
        steps=_int_list(args.steps, "--steps"),
        spacings=tuple(dict.fromkeys(spacings)),
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        ema_sigma_rel=args.ema_sigma_rel,
        log=lambda message: print(message, file=sys.stderr),
    )
    head = ("sampler", "spacing", "steps", "NFE", "N", "FLD", "floor", "seconds")
    print("{:>11} {:>9} {:>6} {:>5} {:>6} {:>9} {:>8} {:>8}".format(*head))
    for r in result["rows"]:
        print(
            f"{r['sampler']:>11} {r['spacing']:>9} {r['steps']:>6} {r['nfe']:>5} {r['n']:>6} {r['fld']:>9.3f}"
            f" {r['fld_train_test']:>8.3f} {r['sample_seconds']:>8.1f}"
        )
    print(f"wrote {result['path']} and sweep.png")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_lenet_train(args) -> int:
    from ddpm.data.images import data_root
    from ddpm.metrics.lenet import load_lenet

    result = load_lenet(
        args.dataset,
        root=args.root,
        cache_dir=data_root(args.root),
        retrain=True,
        log=lambda message: print(message, file=sys.stderr),
    )
    print(f"{args.dataset}: LeNet5 test accuracy {result.test_accuracy:.2%} in {result.seconds:.1f} s")
    print(f"saved {result.path}")
    if args.json:
        summary = {
            "dataset": args.dataset,
            "test_accuracy": result.test_accuracy,
            "seconds": result.seconds,
            "path": str(result.path),
            "data_sha256": result.data_sha256,
        }
        print(json.dumps(summary))
    return 0


def class_label(text: str) -> int | str:
    """``--label`` of ddpm sample: a class, or "all"."""
    return text if text == "all" else int(text)


def _ema_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ema-sigma-rel",
        type=float,
        metavar="S",
        help="use the post-hoc EMA of length σ_rel S, rebuilt from the run's snapshots (train.posthoc_ema)",
    )


def _options(args) -> dict:
    """The sampler options given on the command line (``--eta``, ``--s-churn``, …), by config key."""
    return {key: getattr(args, key) for key in run.SAMPLER_OPTIONS}


def _sampling_flags(p: argparse.ArgumentParser, default_steps: str = "the run's") -> None:
    """--sampler, --steps, --spacing, the samplers' options and --guidance, shared by sample and eval."""
    p.add_argument(
        "--sampler",
        choices=[*SAMPLERS, "auto"],
        help="default: the run's (auto: the one ddpm.samplers.AUTO gives for the steps)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help=f"network evaluations per sample (default: {default_steps}); Heun's steps take two, but one",
    )
    p.add_argument(
        "--spacing", choices=[*SPACINGS, "auto"], help="which steps when fewer than T (default: the run's)"
    )
    p.add_argument("--eta", type=float, help="DDIM's η in [0, 1] (default 0: deterministic)")
    churn = "heun-churn's (Karras et al. 2022, Alg. 2; default: the paper's for CIFAR-10,"
    p.add_argument("--s-churn", type=float, metavar="S", help=f"{churn} 30)")
    p.add_argument("--s-tmin", type=float, metavar="S", help=f"{churn} 0.01)")
    p.add_argument("--s-tmax", type=float, metavar="S", help=f"{churn} 1)")
    p.add_argument("--s-noise", type=float, metavar="S", help=f"{churn} 1.007)")
    p.add_argument(
        "--guidance",
        type=float,
        help="guidance weight w: classifier-free (conditional runs; --guide: autoguidance)",
    )


def _guide_flags(p: argparse.ArgumentParser) -> None:
    """--guide and --guidance-interval, as ddpm sample and ddpm eval have them."""
    p.add_argument(
        "--guide",
        metavar="FOLDER",
        help="autoguidance (--guidance w, any run): guide away from this weaker model, a run folder or one "
        "of its checkpoints (RUN/checkpoints/step-N) on the same data and diffusion",
    )
    p.add_argument(
        "--guidance-interval",
        metavar="LO,HI",
        help="guide only at noise levels σ_t in (LO, HI] (Kynkäänniemi et al. 2024; default: everywhere)",
    )


def _guidance_interval(args) -> tuple[float, float] | None:
    """``--guidance-interval LO,HI``: two numbers 0 ≤ LO < HI (HI may be inf), or None when not given."""
    text = args.guidance_interval
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--guidance-interval {text!r}: expected LO,HI, two numbers such as 0.3,5"
        ) from None
    if not is_interval((lo, hi)):
        raise ConfigError(f"--guidance-interval {text!r}: expected 0 ≤ LO < HI")
    return lo, hi


def _weights_flags(p: argparse.ArgumentParser) -> None:
    """--weights, --ema-sigma-rel and --device, as ddpm sample has them."""
    p.add_argument(
        "--weights", choices=("ema", "model"), default="ema", help="the EMA (default) or the raw weights"
    )
    _ema_flag(p)
    p.add_argument("--device", help="default: the run's (auto: CUDA when available)")


def _edit_flags(p: argparse.ArgumentParser, out_help: str, n: bool = True) -> None:
    """The run, --image, --out, (--n, --seed), and the weights' flags, shared by the editing commands."""
    p.add_argument("run", help="the run folder (of images)")
    p.add_argument("--image", required=True, help="a .png of the run's size and channels, or a .npy array")
    p.add_argument("--out", required=True, help=out_help)
    if n:
        p.add_argument("--n", type=int, default=4, help="how many results from the one image (default 4)")
        p.add_argument("--seed", type=int, default=0, help="the noise's seed (default 0)")
    _weights_flags(p)


def _ddim_flags(p: argparse.ArgumentParser) -> None:
    """--steps, --spacing and --refine of DDIM inversion and decoding."""
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's sampling steps)")
    p.add_argument("--spacing", choices=SPACINGS, help="which steps when fewer than T (default: uniform)")
    p.add_argument(
        "--refine", type=int, default=0, help="fixed-point iterations a step, towards the exact inverse (0)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm", description="Denoising diffusion probabilistic models from first principles."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (or resume the run in --out)")
    p.add_argument(
        "preset", metavar="PRESET|CONFIG", help=f"a preset ({', '.join(PRESETS)}) or a config.json"
    )
    p.add_argument(
        "--out",
        required=True,
        help="the run folder: new, empty, or a ddpm run to resume (with the config it was started with)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument(
        "--seed",
        type=int,
        help="the run's seed: initial weights, data order, every draw (default: the config's)",
    )
    p.add_argument("--max-steps", type=int, help="train until this step (also the learning-rate horizon)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this invocation")
    p.add_argument(
        "--fit-horizon",
        action="store_true",
        help="with --max-minutes: once the first steps are timed, end the learning-rate schedule (lower "
        "max_steps) where the budget runs out on this machine (train.fit_horizon)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over: remove what ddpm wrote in the run (not its other files)",
    )
    p.add_argument("--json", action="store_true", help="end with the final metrics as one JSON line")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run", help="the run folder")
    p.add_argument("--n", type=int, default=64, help="how many samples (default 64)")
    p.add_argument("--out", required=True, help="a .png (scatter or grid) or .npy file (the [-1, 1] array)")
    p.add_argument("--gif", help="also write a .gif of the reverse process")
    p.add_argument(
        "--seed", type=int, default=0, help="the noise's seed (default 0): same seed, same samples"
    )
    p.add_argument(
        "--label",
        type=class_label,
        help="the class to draw (conditional models; needed by --guidance), or all: a grid row per class",
    )
    _sampling_flags(p)
    _guide_flags(p)
    p.add_argument(
        "--weights",
        choices=("ema", "model"),
        default="ema",
        help="the EMA of the weights (default; what the run was made for) or the raw trained weights",
    )
    _ema_flag(p)
    p.add_argument("--device", help="default: the run's (auto: CUDA when available)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("inpaint", help="fill the masked part of an image (RePaint)")
    _edit_flags(p, "the completions: a .png grid or a .npy array")
    p.add_argument("--mask", required=True, help="a PNG of the image's size: white keeps, black is filled")
    p.add_argument("--steps", type=int, help="reverse steps (default: the run's)")
    p.add_argument("--spacing", choices=SPACINGS, help="which steps when fewer than T (default: uniform)")
    p.add_argument("--jump-length", type=int, default=10, help="levels jumped back when resampling (10)")
    p.add_argument("--resample", type=int, default=10, help="walks down each stretch (10; 1: no resampling)")
    p.add_argument("--label", type=int, help="the class to complete towards (conditional models)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight w (conditional runs)")
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("edit", help="SDEdit: noise an image part of the way and denoise it")
    _edit_flags(p, "the edits: a .png grid or a .npy array")
    p.add_argument(
        "--strength", type=float, required=True, help="in [0, 1]: how far to noise (0: the image itself)"
    )
    p.add_argument("--label", type=int, help="the class to edit towards (conditional models)")
    _sampling_flags(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("invert", help="DDIM inversion: the noise whose deterministic sample is the image")
    _edit_flags(p, "the noise x_T: a .npy array (or a .png picture of it)", n=False)
    p.add_argument("--reconstruct", help="also write the image decoded back from the noise (.png or .npy)")
    _ddim_flags(p)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("interpolate", help="slerp between the noises of two images (inverted) or two seeds")
    p.add_argument("run", help="the run folder")
    pair = p.add_mutually_exclusive_group(required=True)
    pair.add_argument("--images", nargs=2, metavar="IMG", help="two images (.png or .npy), inverted first")
    pair.add_argument("--seeds", nargs=2, type=int, metavar="S", help="two noise seeds")
    p.add_argument("--out", required=True, help="the frames: a .png strip or a .npy array")
    p.add_argument("--frames", type=int, default=8, help="images from one end to the other (default 8)")
    _ddim_flags(p)
    _weights_flags(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("nll", help="negative log-likelihood in bits/dim: probability-flow ODE and the bound")
    p.add_argument("run", help="the run folder")
    p.add_argument("--n", type=int, default=100, help="held-out data points (default 100)")
    p.add_argument("--batch-size", type=int, default=50, help="points a batch (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dequantisation and the trace probes")
    p.add_argument(
        "--trace", choices=TRACES, default="rademacher", help="divergence: Hutchinson probe or exact (2-D)"
    )
    p.add_argument("--rtol", type=float, default=RTOL, help=f"RK45's relative tolerance (default {RTOL:g})")
    p.add_argument("--atol", type=float, default=ATOL, help=f"RK45's absolute tolerance (default {ATOL:g})")
    p.add_argument("--no-vlb", action="store_true", help="skip the variational bound (T network calls)")
    _ema_flag(p)
    p.add_argument("--device", help="default: the run's (auto: CUDA when available)")
    p.add_argument("--json", action="store_true", help="end with the report as one JSON line")
    p.set_defaults(func=cmd_nll)

    p = sub.add_parser("data", help="manage data sets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("fetch", help="download (or find) and verify MNIST-like data sets")
    p.add_argument("names", nargs="+", choices=IMAGE_SETS, metavar="NAME", help=", ".join(IMAGE_SETS))
    p.add_argument("--root", help="cache folder (default: $DDPM_DATA or ~/.cache/ddpm)")
    p.add_argument("--source", help="a folder already holding the IDX files (raw or .gz), tried first")
    p.add_argument("--no-apt", action="store_true", help="never install the Debian package")
    p.set_defaults(func=cmd_data_fetch)

    p = sub.add_parser("eval", help="sample a run and measure it: FLD with its references, classes, FID")
    p.add_argument("run", help="the run folder (MNIST or Fashion-MNIST)")
    p.add_argument("--n", type=int, default=10_000, help="how many samples (default 10000)")
    _sampling_flags(p)
    _guide_flags(p)
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
    p.add_argument("--fid", action="store_true", help="also the standard FID on Inception-v3 (slow on a CPU)")
    _ema_flag(p)
    p.add_argument(
        "--batch-size", type=int, help="samples drawn at once (default: 100 on a CPU, 1000 on a GPU)"
    )
    p.add_argument(
        "--name",
        help="report name, a file name in RUN/eval (default: from sampler, steps, n, guidance and seed)",
    )
    p.add_argument("--device", help="default: the run's (auto: CUDA when available)")
    p.add_argument("--json", action="store_true", help="end with the report as one JSON line")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="FLD against network evaluations, for each sampler and spacing")
    p.add_argument("run", help="the run folder (MNIST or Fashion-MNIST)")
    p.add_argument("--n", type=int, default=1000, help="samples per point (default 1000)")
    p.add_argument("--full-n", type=int, help="samples for the full-T DDPM point (default: --n)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated (default: all)")
    p.add_argument(
        "--steps",
        default="10,20,50,100",
        help="comma-separated network evaluations per sample (T, with ddpm, is always added)",
    )
    p.add_argument(
        "--spacings",
        default="uniform",
        help=f"comma-separated spacings, each measured at every step count ({', '.join(SPACINGS)})",
    )
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight w (conditional runs)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed of every point (default 0)")
    _ema_flag(p)
    p.add_argument(
        "--batch-size", type=int, help="samples drawn at once (default: 100 on a CPU, 1000 on a GPU)"
    )
    p.add_argument("--device", help="default: the run's (auto: CUDA when available)")
    p.add_argument("--json", action="store_true", help="end with the sweep as one JSON line")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("lenet", help="the LeNet5 classifier behind FLD")
    lenet_sub = p.add_subparsers(dest="lenet_command", required=True)
    p = lenet_sub.add_parser("train", help="train LeNet5 on a data set and cache it for ddpm eval")
    p.add_argument("--dataset", choices=IMAGE_SETS, default="mnist")
    p.add_argument("--root", help="data and model cache (default: $DDPM_DATA or ~/.cache/ddpm)")
    p.add_argument("--json", action="store_true", help="end with a JSON line holding test_accuracy")
    p.set_defaults(func=cmd_lenet_train)

    p = sub.add_parser("export", help="a small copy of a run for sampling and eval: its final EMA alone")
    p.add_argument("run", help="the run folder")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument(
        "--fp16", action="store_true", help="round the EMA weights to fp16: half the size, loaded as fp32"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="sample.KEY=VALUE",
        help="how the export samples by default, e.g. sample.guidance=0.5 (sample.* keys only; repeatable)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="describe a run: config, step, metrics, weight checksums")
    p.add_argument("run", help="the run folder")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("n", "batch_size", "full_n", "jump_length", "resample"):
        if getattr(args, flag, None) is not None and getattr(args, flag) < 1:
            print(f"ddpm: error: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.command == "train":
            print(
                "ddpm: interrupted; the last checkpoint is kept: run the same command to resume",
                file=sys.stderr,
            )
        else:
            print(f"ddpm: {args.command} interrupted; nothing more was written", file=sys.stderr)
        return 130
    except (
        ValueError,
        OSError,
        FloatingPointError,
        InceptionError,
        PeerFailed,
    ) as e:  # ConfigError, RunError, CheckpointError, data errors, another torchrun process's error
        print(f"ddpm: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
