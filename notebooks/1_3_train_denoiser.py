# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1.3 Training a denoiser for the spiral
#
# Notebook 1.2 showed that we could walk from noise back to the data if we knew $x_0$. The model's job is
# to stand in for that unknown $x_0$. Following Ho et al. 2020 we let a network $\varepsilon_\theta(x_t, t)$
# predict the noise $\varepsilon$ that was mixed into $x_t$, and train it with the simplified objective
#
# $$L_\text{simple}(\theta) = \mathbb{E}_{t,\,x_0,\,\varepsilon}\Big[\big\|\varepsilon -
#   \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big)\big\|^2\Big]
# \qquad \text{(eq. 14, Algorithm 1)}$$
#
# with $t$ uniform over the steps and $\varepsilon \sim \mathcal{N}(0, I)$. Sampling is Algorithm 2: start
# from $x_T \sim \mathcal{N}(0, I)$ and apply the reverse step of eq. 11 down to $t = 1$.
#
# We do not write a training loop here: `ddpm.training.train` is the library's engine, the same one that
# trains the image models later in the series. A *preset* is a complete configuration: `get_preset("spiral")`
# is a small residual MLP (4 blocks of 128 units, each told $t$ through a sinusoidal embedding), the cosine
# schedule with $T = 200$, batches of 512 points drawn from 100,000 spiral samples, AdamW with warm-up and
# cosine decay, and an exponential moving average (EMA) of the weights that is used for sampling.
#
# Flags: `--steps N` shortens training (default: the preset's); `--compare` also trains the series' own
# small model; `--restart` retrains from scratch (otherwise an existing run in `--out` is resumed, so
# re-running the notebook is quick).

# %%
import json

import torch
from _common import parse_args, wrote

from ddpm.data.toy import make_toy
from ddpm.metrics.points import points_metrics
from ddpm.plotting import points_gif, scatter_row
from ddpm.presets import get_preset
from ddpm.run import ReverseFrames, load_run, sample
from ddpm.training import train


def _flags(parser):
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--compare", action="store_true", help="also train the series' small model")
    parser.add_argument(
        "--series-steps", type=int, default=None, help="its training steps (default: as --steps)"
    )
    parser.add_argument("--restart", action="store_true", help="retrain instead of resuming a run in --out")
    parser.add_argument("--n", type=int, default=2000, help="points sampled for the pictures")


args = parse_args("1_3_train_denoiser", "Train the spiral denoiser and watch it sample.", _flags)
out = args.out
cfg = get_preset("spiral")
if args.steps is not None:
    cfg.train.max_steps = args.steps
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, args.steps // 10))
print(json.dumps({k: cfg.to_dict()[k] for k in ("model", "diffusion")}, indent=1))
print(f"training for {cfg.train.max_steps} steps of {cfg.train.batch_size} points")

# %% [markdown]
# ## Train
#
# `train(cfg, out)` writes everything into one run folder: `config.json`, checkpoints, `metrics.csv` (the
# loss every `log_every` steps), `loss.png`, a scatter of samples, and `metrics.json` with the final
# evaluation. It returns those metrics.

# %%
run_dir = out / "run"
metrics = train(cfg, run_dir, restart=args.restart)
wrote(run_dir / "loss.png")

# %% [markdown]
# The loss is the mean squared error of the predicted noise. It cannot reach zero: from $x_t$ alone the
# noise is not fully determined (many $x_0$ could have led to the same $x_t$, especially at large $t$),
# so the loss levels off at the irreducible part of that uncertainty.

# %% [markdown]
# ## Sample
#
# `load_run` rebuilds the model from the run folder alone, and `sample` runs the reverse process
# (Algorithm 2) with the run's settings. Its `callback(i, t, x, x0)` sees every intermediate state $x_t$
# and the model's current guess $\hat x_0$ (eq. 15), which we keep for pictures.

# %%
run = load_run(run_dir)
print(f"loaded {run.checkpoint} (step {run.step})")
T = run.schedule.T
snap = [T - 1, *(round(f * T) for f in (0.75, 0.5, 0.3, 0.15, 0.08, 0.03)), 0]  # for the rows of snapshots
# GIF frames: denser near the end, where the spiral appears.
keep = {*range(0, 40, 3), *range(40, T, 16), *snap}
collect = ReverseFrames()  # after each reverse step index t: the state x_t and the guess x̂_0 made at t
samples = sample(run.cfg, run.model, run.schedule, args.n, seed=1, callback=collect).cpu()
states, guesses = dict(zip(collect.t, collect.states)), dict(zip(collect.t, collect.guesses))
data = make_toy("spiral", args.n, seed=2)
wrote(scatter_row(out / "samples.png", [data, samples], [f"data ({args.n} points)", f"samples ({args.n})"]))

# %% [markdown]
# ## How good are the samples?
#
# Two numbers, both from `ddpm.metrics.points`:
#
# * **mean distance to the curve**: how far, on average, a sample lies from the continuous spiral (the data
#   itself scores 0). It measures *precision*, but a model that put every point on one spot of the curve
#   would also score 0.
# * **energy distance** to a fresh draw of the data: zero only if the two distributions are equal, so it
#   also catches missing parts of the spiral or points piled up in the wrong places. With finitely many
#   points even a perfect sampler does not score 0, so we print the **floor**: the energy distance between
#   two independent draws of the data of the same size. A good model lands close to the floor.
#
# For scale, we score two baselines the same way: pure noise $\mathcal{N}(0, I)$ (what we start from) and
# the data blurred with Gaussian noise of standard deviation 0.05.

# %%
print("metrics written by train() (EMA weights, fresh samples):")
for key in ("step", "parameters", "mean_distance_to_curve", "energy_distance", "energy_distance_floor"):
    if key in metrics:
        print(
            f"  {key:24s} {metrics[key]:,}"
            if isinstance(metrics[key], int)
            else f"  {key:24s} {metrics[key]:.5f}"
        )
rows = {
    "trained model": samples,
    "pure noise N(0, I)": torch.randn(args.n, 2, generator=torch.Generator().manual_seed(3)),
    "data + noise 0.05": make_toy("spiral", args.n, seed=4, noise=0.05),
}
print(f"\n{'':20s} {'distance to curve':>18s} {'energy distance':>16s} {'floor':>9s}")
for name, pts in rows.items():
    m = points_metrics(pts, "spiral", seed=5)
    print(
        f"{name:20s} {m['mean_distance_to_curve']:18.4f} {m['energy_distance']:16.5f} "
        f"{m['energy_distance_floor']:9.5f}"
    )

# %% [markdown]
# ## Watching the reverse process
#
# Top: the state $x_t$ as the model walks from noise back to the spiral. Bottom: the model's guess
# $\hat x_0$ at the same moment. Early on, when $x_t$ is mostly noise, the best guess is a blurry average
# of the spiral; as $t$ shrinks the guesses sharpen onto the curve and $x_t$ follows them.
#
# The very first guess (from $x_{200}$) sits on the edges of the square $[-1, 1]^2$. That is expected: there
# $\sqrt{\bar\alpha_T} \approx 2.5 \cdot 10^{-4}$, so eq. 15 divides by it and blows any error in
# $\varepsilon_\theta$ up 4000-fold, and the preset clamps $\hat x_0$ to the data range $[-1, 1]$ (as Ho et
# al.'s code does). It does no harm: in the posterior mean (eq. 7) $\hat x_0$ is multiplied by a weight
# that is just as tiny at $t = T$.

# %%
order = sorted(states, reverse=True)
gif = points_gif(
    out / "reverse_process.gif", [states[t] for t in order], [f"reverse process: t = {t}" for t in order]
)
wrote(gif)
wrote(
    points_gif(
        out / "reverse_x0_guess.gif",
        [guesses[t] for t in order],
        [f"guess of x_0 at t = {t + 1}" for t in order],
    )
)
wrote(scatter_row(out / "reverse_snapshots.png", [states[t] for t in snap], [f"$x_{{{t}}}$" for t in snap]))
wrote(
    scatter_row(
        out / "reverse_x0_guesses.png",
        [guesses[t] for t in snap],
        [rf"$\hat x_0$ from $x_{{{t + 1}}}$" for t in snap],
    )
)

# %% [markdown]
# ## Optional: the series' own small model
#
# The series trains a much smaller network: a plain chain of 3 layers of 32 units (preset
# `spiral-series`, about 7k parameters), against about 138k for our residual MLP with its normalised
# residual blocks. With `--compare` we train it with the same recipe (same batch and learning rate, and by
# default the same number of steps) and compare the two side by side. In a short budget the small plain
# chain is far behind — after 3000 steps its samples are still a diffuse cloud — but it is not a matter of
# capacity: given many more steps (`--series-steps 20000`, about 2 minutes on a CPU) it reaches about the
# same distance to the curve as the big model. The residual blocks mostly buy speed of training.

# %%
if args.compare:
    cfg_series = get_preset("spiral-series")
    cfg_series.train.max_steps = args.series_steps or cfg.train.max_steps
    cfg_series.train.warmup_steps = min(
        cfg_series.train.warmup_steps, max(1, cfg_series.train.max_steps // 10)
    )
    metrics_series = train(cfg_series, out / "run-series", restart=args.restart)
    run_series = load_run(out / "run-series")
    samples_series = sample(run_series.cfg, run_series.model, run_series.schedule, args.n, seed=1).cpu()
    print(f"\n{'':16s} {'parameters':>10s} {'distance to curve':>18s} {'energy distance':>16s} {'floor':>9s}")
    for name, m in (("spiral", metrics), ("spiral-series", metrics_series)):
        print(
            f"{name:16s} {m['parameters']:10,d} {m['mean_distance_to_curve']:18.4f} "
            f"{m['energy_distance']:16.5f} {m['energy_distance_floor']:9.5f}"
        )
    wrote(
        scatter_row(
            out / "compare_models.png",
            [data, samples, samples_series],
            [
                "data",
                f"spiral ({metrics['parameters']:,} params)",
                f"spiral-series ({metrics_series['parameters']:,})",
            ],
        )
    )
