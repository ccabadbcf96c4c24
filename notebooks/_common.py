"""Shared argument parsing (and printing what was written) for the walkthrough notebooks, and the steps
the MNIST notebooks of part 2 have in common (training, the denoising figure, the reverse-process figures).

Every notebook takes ``--out DIR`` (default ``out/<notebook name>`` in the repository root, wherever it is
started from: Jupyter starts kernels in ``notebooks/``) and ``--threads N``. Arguments are read
with ``parse_known_args`` so the same file also runs inside Jupyter, whose kernel passes its own flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def parse_args(name: str, description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """Parse the notebook's flags, create ``args.out`` and apply ``--threads``; returns the namespace."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=description)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / name, help="folder for the figures")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: these tensors are tiny, and more threads than free cores "
        "slow small models down a lot; 0 keeps torch's default)",
    )
    if extra is not None:
        extra(parser)
    args, _ = parser.parse_known_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def wrote(*paths) -> None:
    """Print each file a notebook wrote; inside Jupyter also show it (``ddpm.plotting`` draws with Agg)."""
    for path in paths:
        if path is None:
            continue
        shown = os.path.relpath(path) if Path(path).is_absolute() and ROOT in Path(path).parents else path
        print(f"wrote {shown}")
        if _in_notebook():
            from IPython.display import Image, display

            display(Image(filename=str(path)))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


# --- Part 2 (MNIST): the steps notebooks 2.1–2.3 share. The ddpm imports stay inside the functions, so that
# the part-1 notebooks, which also import this module, load nothing more (``ddpm.plotting`` selects Agg).


def mnist_flags(parser: argparse.ArgumentParser) -> None:
    """The MNIST notebooks' flags: training budget, resuming, and how many samples with how many steps."""
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget of this call")
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: the preset's)")
    parser.add_argument("--restart", action="store_true", help="retrain instead of resuming a run in --out")
    parser.add_argument("--samples", type=int, default=36, help="digits generated from noise")
    parser.add_argument("--sample-steps", type=int, default=100, help="reverse steps when sampling")
    parser.add_argument("--log-every", type=int, default=5, help="steps per point of the loss curve")


def mnist_setup(name: str, description: str, preset: str, extra=None):
    """``parse_args`` with ``mnist_flags`` (and ``extra``'s), ``mnist_config``; returns (args, out, cfg)."""

    def flags(parser):
        mnist_flags(parser)
        if extra is not None:
            extra(parser)

    args = parse_args(name, description, flags)
    return args, args.out, mnist_config(preset, args)


def mnist_config(preset: str, args):
    """The preset's config with the notebook's flags applied (see ``mnist_flags``)."""
    from ddpm.presets import get_preset

    cfg = get_preset(preset)
    cfg.train.max_minutes = args.minutes
    if args.steps is not None:
        cfg.train.max_steps = args.steps
        cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, args.steps // 10))
    cfg.train.log_every = args.log_every
    cfg.train.sample_n = args.samples  # the grid train() draws at the end, in run/samples/
    cfg.sample.steps = args.sample_steps
    return cfg


def train_run(cfg, out: Path, restart: bool) -> Path:
    """Train (or resume) the run in ``out/run``, plot its loss to ``out/loss.png``; returns the run folder.
    Says first what it will train (not said when a notebook loads a trained run instead)."""
    from ddpm.plotting import loss_curve
    from ddpm.training import train

    print(
        f"model {cfg.model.name} {cfg.model.kwargs}, {cfg.diffusion.schedule} schedule, T = {cfg.diffusion.T}"
    )
    print(f"training for up to {cfg.train.max_minutes} minutes, at most {cfg.train.max_steps} steps")
    run_dir = out / "run"
    metrics = train(cfg, run_dir, restart=restart)
    print(f"step {metrics['step']}, {metrics['train_seconds']:.0f} s of training in all")
    if (run_dir / "metrics.csv").exists():
        wrote(loss_curve(out / "loss.png", run_dir / "metrics.csv"))
    return run_dir


def pretrained_flags(parser: argparse.ArgumentParser, model: Path) -> None:
    """--run and --train: which trained model a Part 4 notebook uses (``model`` by default, if present)."""
    parser.add_argument("--run", type=Path, help=f"a trained MNIST run (default: {model}, if present)")
    parser.add_argument("--train", action="store_true", help="train a short run even if the default exists")


def trained_run(args, cfg, out: Path, model: Path) -> Path:
    """The run a notebook works on: --run, else ``model`` if present (and no --train), else a short one."""
    if args.run:
        return args.run
    if model.is_dir() and not args.train:
        return model
    return train_run(cfg, out, args.restart)


def open_run(run_dir: Path):
    """Load the trained run and print its size; returns (run, its model's device, the test images)."""
    from ddpm.data import load_dataset
    from ddpm.models import count_parameters
    from ddpm.run import load_run

    run = load_run(run_dir)
    device = next(run.model.parameters()).device
    print(f"loaded {run.checkpoint} (step {run.step}): {count_parameters(run.model):,} parameters")
    return run, device, load_dataset(run.cfg.data, split="test").x


def paper_steps(T: int) -> list[int]:
    """The noise levels the figures show: paper steps 50 … 800 for T = 1000."""
    return [round(f * T) for f in (0.05, 0.2, 0.4, 0.6, 0.8)]


@torch.no_grad()
def denoise(run, x0, steps, seed=0):
    """For each paper step t: noise x0 to x_t (eq. 4) and the model's guess x̂_0 (eq. 15)."""
    from ddpm.diffusion import q_sample, x0_eps_from_output

    g = torch.Generator().manual_seed(seed)
    d = run.cfg.diffusion
    pairs = []
    for t in steps:
        tt = torch.full((len(x0),), t - 1, dtype=torch.long, device=x0.device)
        x_t = q_sample(x0, tt, run.schedule, torch.randn(x0.shape, generator=g).to(x0.device))
        output = run.model(x_t, tt.float())
        pairs.append((x_t, x0_eps_from_output(output, x_t, tt, run.schedule, d.prediction, d.clip_x0)[0]))
    return pairs


def denoising_figure(run, test, out: Path) -> None:
    """``out/denoising.png``: the test digits, then for each of ``paper_steps`` the noisy x_t and the guess
    x̂_0."""
    from ddpm.plotting import labelled_grid

    noise_steps = paper_steps(run.schedule.T)
    pairs = denoise(run, test, noise_steps)
    labels = ["original"]
    for t in noise_steps:
        signal = float(run.schedule.sqrt_alpha_bar[t - 1])
        labels += [f"$x_{{{t}}}$ ($\\sqrt{{\\bar\\alpha}}$={signal:.2f})", rf"$\hat x_0$ from $x_{{{t}}}$"]
    wrote(
        labelled_grid(
            out / "denoising.png",
            torch.cat([test, *(img for pair in pairs for img in pair)]),
            8,
            labels,
            title=f"{run.cfg.preset}: denoising test digits (step {run.step})",
        )
    )


def reverse_process_figures(run, n_samples: int, sample_steps: int, out: Path) -> torch.Tensor:
    """Sample ``n_samples`` digits in ``sample_steps`` reverse steps (Algorithm 2), keeping every state and
    guess; write the sample grid, GIFs of the reverse process and of the guess x̂_0, and snapshots of both.
    Returns the samples."""
    import numpy as np

    from ddpm.plotting import grid_gif, labelled_grid, save_grid
    from ddpm.run import ReverseFrames, sample, sampling_config

    run.cfg = sampling_config(run.cfg, steps=sample_steps)
    collect = ReverseFrames()  # after reverse step i (from array index t): the new state, the guess at t
    samples = sample(run.cfg, run.model, run.schedule, n_samples, seed=1, callback=collect).cpu()
    states, guesses, seen_t = collect.states, collect.guesses, collect.t
    wrote(save_grid(out / "samples.png", samples))
    # The GIFs show the first 16 samples in about 30 frames (all frames of all samples would be megabytes).
    frames = sorted({*range(0, len(states), max(1, len(states) // 30)), len(states) - 1})
    wrote(grid_gif(out / "reverse_process.gif", [states[i][:16] for i in frames]))
    wrote(grid_gif(out / "reverse_x0_guess.gif", [guesses[i][:16] for i in frames]))

    # Snapshots of the first 4 samples: in each column the state x_t and the guess x̂_0 made from it.
    cols = sorted({round(k) for k in np.linspace(1, len(states) - 1, 8)})
    snap = [torch.stack([states[i - 1][j], guesses[i][j]]) for j in range(min(4, n_samples)) for i in cols]
    snap = torch.stack(snap).reshape(-1, len(cols), 2, *samples.shape[1:]).transpose(1, 2).flatten(0, 2)
    wrote(
        labelled_grid(
            out / "reverse_snapshots.png",
            snap,
            len(cols),
            [r"$x_t$", r"$\hat x_0$"] * min(4, n_samples),
            [f"t={seen_t[i] + 1}" for i in cols],
            title="reverse process: state and guess",
        )
    )
    return samples
