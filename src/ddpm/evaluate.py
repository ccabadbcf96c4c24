"""``ddpm eval``: sample a trained run with its EMA weights and measure the samples; ``ddpm nll``: its
likelihood of held-out data, by the probability-flow ODE and by the variational bound.

The report holds the Fréchet LeNet Distance of N samples against the test set with its two references at
the same N (real training images: the floor; uniform noise), the predicted-class histogram and its entropy,
precision and per-class recall for class-conditional models (samples are requested class by class in
turn), and on request the standard FID on Inception-v3 features. It is written to
``RUN/eval/<name>.json``, next to a grid of the first samples (``RUN/eval/<name>.png``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm import likelihood, plotting
from ddpm.data import IMAGE_SETS
from ddpm.data import images as image_data
from ddpm.fileio import atomic_path, atomic_write_text
from ddpm.metrics.fld import (
    class_entropy,
    class_histogram,
    fld,
    precision_recall,
    random_subset,
    uniform_noise_images,
)
from ddpm.metrics.frechet import frechet_distance, gaussian_statistics
from ddpm.metrics.lenet import LeNetResult, data_checksum, lenet_features, lenet_predict, load_lenet
from ddpm.progress import progress_bar
from ddpm.registry import check_name
from ddpm.run import (
    SAMPLER_OPTIONS,
    RunError,
    check_finite,
    check_labels,
    evaluations,
    guidance_of,
    is_image,
    load_run,
    sample,
    sample_steps,
    sampling_config,
)
from ddpm.samplers import SAMPLERS, sampler_options

EVAL_DIR = "eval"
GRID_N = 100


# How a sampler's option is written in a report's name (only when the sampler takes it and it is set).
OPTION_TAGS = {"eta": "eta", "s_churn": "churn", "s_tmin": "tmin", "s_tmax": "tmax", "s_noise": "noise"}


def eval_name(
    sampler: str,
    steps: int,
    n: int,
    guidance: float | None,
    seed: int,
    spacing: str = "uniform",
    eta=0.0,
    ema_sigma_rel: float | None = None,
    guide_step: int | None = None,
    guidance_interval: tuple[float, float] | None = None,
    **options: float | None,
) -> str:
    """The report's file stem, e.g. ``ddpm-100-n10000-s0``, ``ddim-50-eta0.5-trailing-n1000-g2-ema0.1-s0``,
    ``dpmpp2m-sde-20-trailing-n2000-g1-guide500-gi0.3-5-s0`` (autoguided by step 500, in σ ∈ (0.3, 5]),
    ``heun-churn-19-churn10-n1000-s0``: the options the sampler takes and that are set (η when not 0)."""
    taken = sampler_options(sampler, eta=eta or None, **options)
    e = "".join(f"-{OPTION_TAGS[key]}{value:g}" for key, value in taken.items())
    sp = f"-{spacing}" if spacing != "uniform" else ""
    g = f"-g{guidance:g}" if guidance is not None else ""
    ema = f"-ema{ema_sigma_rel:g}" if ema_sigma_rel is not None else ""
    guide = f"-guide{guide_step}" if guide_step is not None else ""
    gi = f"-gi{guidance_interval[0]:g}-{guidance_interval[1]:g}" if guidance_interval is not None else ""
    return f"{sampler}-{steps}{e}{sp}-n{n}{g}{guide}{gi}{ema}-s{seed}"


def guide_name(run_dir: Path, folder: Path | None) -> str | None:
    """How a report names autoguidance's guide: relative to the run when it is one of the run's own
    checkpoints (so the report stays true when the folder moves or is exported), else its absolute path."""
    if folder is None:
        return None
    folder, run_dir = Path(folder).resolve(), Path(run_dir).resolve()
    return str(folder.relative_to(run_dir) if folder.is_relative_to(run_dir) else folder)


def check_report_name(name: str) -> str:
    """A report name given by the user stays a file name inside ``RUN/eval``: no path separator, no ``..``."""
    if "/" in name or "\\" in name or ".." in name:
        raise RunError(
            f"--name {name}: not a plain file name (the report goes to RUN/{EVAL_DIR}/; no /, \\ or ..)"
        )
    return name


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [−1, 1] and round to 8 bits: we measure the images as they would be saved."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


@dataclass
class ReferenceSet:
    """What samples of one dataset are measured against: its LeNet, the test images and their LeNet
    statistics, and the training images (the floor). Load once, measure many sample sets."""

    dataset: str
    classifier: LeNetResult
    test_x: torch.Tensor
    train_x: torch.Tensor
    progress: bool = True

    @functools.cached_property
    def test_statistics(self) -> tuple:
        """The Gaussian (μ, Σ) of the test images' LeNet features, computed on first use."""
        return gaussian_statistics(lenet_features(self.classifier.model, self.test_x, progress=self.progress))

    @classmethod
    def load(cls, dataset: str, root=None, progress: bool = True, log=print) -> ReferenceSet:
        if dataset not in IMAGE_SETS:
            raise RunError(
                f"FLD needs a LeNet trained on the run's data; {dataset!r} is not one of {IMAGE_SETS}"
            )
        classifier = load_lenet(
            dataset, root=root, cache_dir=image_data.data_root(root), progress=progress, log=log
        )
        test_x = image_data.to_tensor(image_data.load(dataset, "test", root=root)[0])
        train_x = image_data.to_tensor(image_data.load(dataset, "train", root=root)[0])
        return cls(dataset, classifier, test_x, train_x, progress)

    def check(self, n: int) -> None:
        """Refuse sample counts that cannot be measured: a covariance needs two; the floor needs n real
        training images."""
        if n < 2:
            raise RunError("--n must be at least 2 (a covariance needs two samples)")
        if n > len(self.train_x):
            raise RunError(
                f"--n {n}: the floor needs as many training images, and there are {len(self.train_x)}"
            )


def measure_samples(
    x: torch.Tensor,
    reference: ReferenceSet,
    *,
    requested: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """FLD of the (quantized) samples ``x`` against the test set, with the two references at the same N
    (the floor: as many real training images; uniform noise), the predicted-class histogram and its
    entropy, and for class-conditional samples (``requested`` labels) precision and per-class recall."""
    n = len(x)
    reference.check(n)
    model, stats = reference.classifier.model, reference.test_statistics
    predicted = lenet_predict(model, x)
    k = len(image_data.dataset_info(reference.dataset).classes)
    report = {
        "dataset": reference.dataset,
        "fld": fld(lenet_features(model, x, progress=progress), stats),
        "fld_train_test": fld(lenet_features(model, random_subset(reference.train_x, n, seed)), stats),
        "fld_noise_test": fld(
            lenet_features(model, uniform_noise_images(n, tuple(x.shape[1:]), seed)), stats
        ),
        "class_entropy": class_entropy(predicted, k),
        "class_histogram": class_histogram(predicted, k).tolist(),
    }
    if requested is not None:
        report["precision"], report["recall"] = precision_recall(requested.numpy(), predicted, k)
    return report


def evaluate_run(
    run_dir: Path,
    *,
    n: int = 10_000,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    spacing: str | None = None,
    fid: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
    name: str | None = None,
    ema_sigma_rel: float | None = None,
    progress: bool = True,
    log=print,
    reference: ReferenceSet | None = None,
    reuse: bool = False,
    guide: Path | None = None,
    guidance_interval: tuple[float, float] | None = None,
    **options: float | None,
) -> dict:
    """Sample ``n`` images from the run in ``run_dir`` and measure them; returns (and writes) the report.

    ``options`` are one sampler's (``eta``, ``s_churn``, …; :func:`ddpm.run.sampling_config`).

    ``ema_sigma_rel`` samples the post-hoc EMA of that length instead of the run's EMA
    (:func:`ddpm.run.load_run`). ``guide`` (a run or checkpoint folder, :func:`ddpm.run.guidance_of`) makes
    ``guidance`` autoguidance by that weaker model; ``guidance_interval`` = (σ_lo, σ_hi] limits guidance to
    those noise levels. ``reference`` (the run's dataset, from :meth:`ReferenceSet.load`) saves
    reloading it when one run is measured many times. ``reuse`` returns the report already in ``RUN/eval``
    under the same name instead, when it measured the same checkpoint with the same settings (how an
    interrupted sweep resumes)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if name:
        check_report_name(name)
    loaded = load_run(run_dir, weights="ema", device=device, ema_sigma_rel=ema_sigma_rel)
    cfg = sampling_config(loaded.cfg, sampler=sampler, steps=steps, spacing=spacing, **options)
    num_classes = cfg.model.num_classes
    requested = torch.arange(n) % num_classes if num_classes else None
    guided = guidance_of(run_dir, cfg, guidance, guide, device, guidance_interval)
    guidance, guide_model, guide_step = guided.weight, guided.guide, guided.step
    guidance_interval = guided.interval
    check_labels(cfg, requested, guidance, guide=guide_model is not None)
    if batch_size is None:  # smaller batches sample faster on a CPU (docs/results.md)
        batch_size = 1000 if next(loaded.model.parameters()).is_cuda else 100
    steps = sample_steps(cfg)
    chosen = {key: getattr(cfg.sample, key) for key in SAMPLER_OPTIONS}
    taken = sampler_options(cfg.sample.sampler, **chosen)
    name = name or eval_name(
        cfg.sample.sampler,
        steps,
        n,
        guidance,
        seed,
        cfg.sample.spacing,
        ema_sigma_rel=ema_sigma_rel,
        guide_step=guide_step,
        guidance_interval=guidance_interval,
        **chosen,
    )
    settings = {
        "sampler": cfg.sample.sampler,
        "steps": steps,
        "nfe": evaluations(cfg),
        "spacing": cfg.sample.spacing,
        "eta": cfg.sample.eta if cfg.sample.sampler == "ddim" else None,
        "options": {key: value for key, value in taken.items() if key != "eta"} or None,
        "guidance": guidance,
        "ema_sigma_rel": ema_sigma_rel,
        "guide": guide_name(run_dir, guided.folder),
        "guide_step": guide_step,
        "guidance_interval": None if guidance_interval is None else list(guidance_interval),
    }
    out = run_dir / EVAL_DIR
    if reuse:
        earlier = _earlier_report(out / f"{name}.json", loaded.step, dict(settings, n=n, seed=seed), fid)
        if earlier is not None:
            log(f"reusing {earlier['path']}: the same checkpoint, sampler and settings")
            return earlier
    dataset = cfg.data.name
    if reference is None or reference.dataset != dataset:
        reference = ReferenceSet.load(dataset, cfg.data.root, progress=progress, log=log)
    reference.check(n)
    t_sample = time.perf_counter()
    rows = [0]  # every image any network saw: guidance's second passes count too

    def count(module, inputs, output):
        rows[0] += len(inputs[0])

    hooks = [m.register_forward_hook(count) for m in (loaded.model, guide_model) if m is not None]
    x = sample(
        cfg,
        loaded.model,
        loaded.schedule,
        n,
        seed=seed,
        label=requested,
        guidance=guidance,
        batch_size=batch_size,
        progress=progress,
        guide=guide_model,
        guidance_interval=guidance_interval,
    )
    for hook in hooks:
        hook.remove()
    sample_seconds = time.perf_counter() - t_sample
    x = quantize(check_finite(x.float().cpu()))
    report = {"run": str(run_dir), "checkpoint_step": loaded.step}
    report.update(measure_samples(x, reference, requested=requested, seed=seed, progress=progress))
    if fid:
        report["fid"] = standard_fid(x, reference.test_x, dataset, cfg.data.root, progress=progress, log=log)
    report.update(
        settings,
        ema_profile_error=loaded.posthoc.profile_error if loaded.posthoc else None,
        n=n,
        seed=seed,
        network_evaluations=rows[0] / n,  # per sample, as run: nfe, plus each guided step's second pass
        lenet_test_accuracy=reference.classifier.test_accuracy,
        sample_seconds=sample_seconds,
        sample_images_per_s=n / sample_seconds,
        seconds=time.perf_counter() - t0,
    )
    out.mkdir(exist_ok=True)
    plotting.save_grid(out / f"{name}.png", x[:GRID_N], nrow=math.ceil(math.sqrt(min(n, GRID_N))))
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2) + "\n")
    report["path"] = str(out / f"{name}.json")
    return report


def _earlier_report(path: Path, step: int, settings: dict, fid: bool) -> dict | None:
    """The report at ``path`` if it measured checkpoint ``step`` with ``settings`` (and FID when asked)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = report.get("checkpoint_step") == step and all(report.get(k) == v for k, v in settings.items())
    if not same or (fid and "fid" not in report):
        return None
    return dict(report, path=str(path))


def standard_fid(
    x: torch.Tensor, test_x: torch.Tensor, dataset: str, root, progress: bool = True, log=print
) -> float:
    """FID (Heusel et al. 2017) of ``x`` against the test set on Inception-v3 pool features.

    The test set's statistics are computed once and cached next to the data, keyed by the Inception
    weights and the data checksum. Slow on a CPU (see :mod:`ddpm.metrics.inception`).
    """
    from ddpm.metrics.inception import (
        INCEPTION_SHA256,
        inception_features,
        inception_weights,
        load_inception,
    )

    root = image_data.data_root(root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inception = load_inception(device=device, path=inception_weights(cache_dir=root, progress=progress))
    key = f"{dataset}-test{len(test_x)}-{data_checksum(dataset)[:12]}-{INCEPTION_SHA256[:12]}"
    cache = root / "inception" / f"{key}.npz"
    if cache.is_file():
        stats = np.load(cache)
        mu, sigma = stats["mu"], stats["sigma"]
    else:
        log(f"Inception statistics of the {dataset} test set (once; cached in {cache.parent})")
        mu, sigma = gaussian_statistics(inception_features(inception, test_x, progress=progress))
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as partial:
            np.savez(partial, mu=mu, sigma=sigma)
    features = inception_features(inception, x, progress=progress)
    return frechet_distance(*gaussian_statistics(features), mu, sigma)


SWEEP_STEPS = (10, 20, 50, 100)


def sweep_run(
    run_dir: Path,
    *,
    n: int = 1000,
    full_n: int | None = None,
    samplers: list[str] | None = None,
    steps: tuple[int, ...] = SWEEP_STEPS,
    spacings: tuple[str, ...] = ("uniform",),
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | None = None,
    ema_sigma_rel: float | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Quality against cost: FLD for each sampler, spacing and step count, and the full-T DDPM sampler.

    Every point is one :func:`evaluate_run` (its report lands in ``RUN/eval/`` as usual); ``steps`` count
    network evaluations (``nfe`` in each row: Heun's can be one fewer). The full-T point costs T evaluations
    per sample, so it may use fewer samples (``full_n``); its FLD is then compared with its own floor, at its
    own N. ``ema_sigma_rel`` measures that post-hoc EMA instead of the run's EMA. A point whose report is
    already in ``RUN/eval`` (same checkpoint and settings) is read, not sampled again: a sweep that was
    stopped resumes, and its points can be measured apart (``ddpm eval`` with the same settings). Writes
    ``RUN/eval/sweep.json`` and ``RUN/eval/sweep.png``.
    """
    run_dir = Path(run_dir)
    loaded_cfg = load_run(run_dir, device="cpu").cfg
    T = loaded_cfg.diffusion.T
    full_n = full_n or n
    samplers = samplers or list(SAMPLERS)
    plan = [(s, sp, k, n) for s in samplers for sp in spacings for k in steps if k < T]
    plan.append(("ddpm", "uniform", T, full_n))  # every step: the spacing does not matter
    reference = ReferenceSet.load(loaded_cfg.data.name, loaded_cfg.data.root, progress=progress, log=log)
    rows = []
    for i, (sampler, spacing, k, size) in enumerate(plan):
        log(f"sweep {i + 1}/{len(plan)}: {sampler}, {spacing}, {k} steps, N = {size}")
        report = evaluate_run(
            run_dir,
            n=size,
            sampler=sampler,
            steps=k,
            spacing=spacing,
            guidance=guidance,
            seed=seed,
            batch_size=batch_size,
            device=device,
            ema_sigma_rel=ema_sigma_rel,
            progress=progress,
            log=log,
            reference=reference,
            reuse=True,
        )
        keep = ("sampler", "spacing", "steps", "nfe", "n", "fld", "fld_train_test", "fld_noise_test")
        row = {key: report[key] for key in keep}
        row.update(
            class_entropy=report["class_entropy"],
            sample_seconds=report["sample_seconds"],
            precision=report.get("precision"),
        )
        rows.append(row)
    result = {
        "run": str(run_dir),
        # as every point was sampled: the run's own guidance too (ddpm.run.guidance_of), not only --guidance
        **{key: report[key] for key in ("guidance", "guide", "guidance_interval")},
        "seed": seed,
        "T": T,
        "ema_sigma_rel": ema_sigma_rel,
        "rows": rows,
    }
    out = run_dir / EVAL_DIR
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=2) + "\n")
    plotting.fld_vs_nfe(out / "sweep.png", rows, title=f"{run_dir.name}: FLD against network evaluations")
    result["path"] = str(out / "sweep.json")
    return result


# --- Likelihood: ``ddpm nll`` -----------------------------------------------------------------------------


def likelihood_data(cfg, n: int) -> tuple[torch.Tensor, str]:
    """The ``n`` data points a likelihood is measured on, and what they are: the first ``n`` test images of
    an image set, ``n`` fresh points of a 2-D set (another seed than training's, as its end-of-training
    bound uses), or the first ``n`` images of an image folder (which has no test split)."""
    import dataclasses

    from ddpm.data import load_dataset

    if cfg.data.name in IMAGE_SETS:
        x, what = load_dataset(cfg.data, split="test", progress=False).x, f"{cfg.data.name} test images"
    elif not is_image(cfg):
        held_out = dataclasses.replace(cfg.data, n_samples=n, data_seed=cfg.seed + 3)
        x, what = load_dataset(held_out).x, f"held-out {cfg.data.name} points"
    else:
        x, what = load_dataset(cfg.data, progress=False).x, "training images (the folder has no test split)"
    if n > len(x):
        raise RunError(f"--n {n}: there are {len(x)} {what}")
    return x[:n], what


def likelihood_run(
    run_dir: Path,
    *,
    n: int = 100,
    batch_size: int = 50,
    seed: int = 0,
    trace: str = "rademacher",
    rtol: float = likelihood.RTOL,
    atol: float = likelihood.ATOL,
    vlb: bool = True,
    device: str | None = None,
    ema_sigma_rel: float | None = None,
    progress: bool = True,
) -> dict:
    """Negative log-likelihood of the run's EMA model in bits per dimension on ``n`` held-out data: by the
    probability-flow ODE (:func:`ddpm.likelihood.ode_log_likelihood`, images dequantised) and by the
    variational bound (:func:`ddpm.diffusion.bits_per_dim`, T network calls a batch), each with its
    standard error over the data (which includes the trace estimator's noise) and its seconds.
    Writes ``RUN/eval/nll-n<N>-s<seed>.json``; returns the report."""
    from ddpm.diffusion import bits_per_dim

    run_dir = Path(run_dir)
    if batch_size < 1:
        raise RunError(f"--batch-size {batch_size}: must be at least 1")
    loaded = load_run(run_dir, device=device, ema_sigma_rel=ema_sigma_rel)
    cfg, model, schedule = loaded.cfg, loaded.model, loaded.schedule
    check_name("trace estimator", trace, likelihood.TRACES)
    likelihood.ContinuousVP.from_schedule(schedule)  # a schedule the ODE cannot take is refused first
    data, what = likelihood_data(cfg, n)
    dev = next(model.parameters()).device
    image = is_image(cfg)
    bins, dims = (256 if image else None), data[0].numel()
    generator = torch.Generator(dev).manual_seed(seed)
    model_fn = lambda x, t: model(x, t, None)  # noqa: E731  (conditional models: the "no label" index)
    report = {"run": str(run_dir), "checkpoint_step": loaded.step, "data": what, "n": n, "seed": seed}

    nll, nfe, t0 = [], [], time.perf_counter()
    bar = progress_bar(total=n, desc="ODE likelihood", unit="img", disable=not progress, delay=2)
    for start in range(0, n, batch_size):
        x = data[start : start + batch_size].to(dev)
        y = likelihood.dequantize(x, generator) if image else x
        reached = [1 / schedule.T, len(x)]

        def advance(t, reached=reached):  # RK45 tries times out of order: count the furthest
            if t > reached[0]:
                bar.update(reached[1] * (t - reached[0]) / (1 - 1 / schedule.T))
                reached[0] = t

        result = likelihood.ode_log_likelihood(
            model_fn, y, schedule, cfg.diffusion.prediction, trace=trace, rtol=rtol, atol=atol,
            generator=generator, callback=advance,
        )  # fmt: skip
        nll.append(likelihood.nll_bits_per_dim(result["log_likelihood"], dims, bins))
        nfe.append(result["nfe"])
    bar.close()
    report.update(_mean_se("nll_bits_per_dim", torch.cat(nll)))
    report.update(ode_nfe=nfe, ode_seconds=time.perf_counter() - t0, trace=trace, rtol=rtol, atol=atol)

    if vlb:
        terms, t0 = [], time.perf_counter()
        bar = progress_bar(total=n, desc="variational bound", unit="img", disable=not progress, delay=2)
        for start in range(0, n, batch_size):
            x = data[start : start + batch_size].to(dev)
            bound = bits_per_dim(
                model_fn, x, schedule, cfg.diffusion.prediction, cfg.diffusion.variance, discrete=image,
                generator=generator,
            )  # fmt: skip
            terms.append(torch.stack([bound["total"], bound["prior"], bound["decoder"]], 1).cpu())
            bar.update(len(x))
        bar.close()
        terms = torch.cat(terms)
        report.update(_mean_se("vlb_bits_per_dim", terms[:, 0]))
        report.update(vlb_prior=terms[:, 1].mean().item(), vlb_decoder=terms[:, 2].mean().item())
        report.update(vlb_seconds=time.perf_counter() - t0)
    out = run_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    path = out / f"nll-n{n}-s{seed}.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    report["path"] = str(path)
    return report


def _mean_se(name: str, values: torch.Tensor) -> dict:
    """The mean of per-sample ``values`` and its standard error (std / √n; None for one sample)."""
    n = len(values)
    se = values.double().std().item() / math.sqrt(n) if n > 1 else None
    return {name: values.double().mean().item(), f"{name}_se": se}
