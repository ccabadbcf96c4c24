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
# # 3.1 Classifier-free guidance in two dimensions
#
# Part 1 trained a network $\varepsilon_\theta(x_t, t)$ for one shape. Now the data set, `shapes3`, holds
# three: the spiral (label 0), the s-curve (1) and the moons (2), 30,000 points each, all drawn in the same
# square $[-1, 1]^2$ on top of one another. A point alone often does not say which shape it came from
# (the curves cross); only the label does. We want to ask the model for one shape.
#
# **A conditional model.** The network also takes the label $c$: preset `shapes3-cond` is the spiral's
# MLP with a learned embedding of $c$ added to its embedding of $t$. The embedding has one more row,
# index 3, meaning "no label", $\varnothing$.
#
# **Label dropout.** In training each label is replaced by $\varnothing$ with probability
# $p_\text{uncond} = 0.15$ (`diffusion.p_uncond`). So one network learns both the conditional prediction
# $\varepsilon(x_t, c)$ and the unconditional one $\varepsilon(x_t, \varnothing)$, the noise prediction
# for the mixture of all three shapes.
#
# **Guidance** (Ho & Salimans 2022, *Classifier-Free Diffusion Guidance*, eq. 6). While sampling, replace
# the network's prediction by
#
# $$\tilde\varepsilon(x_t, c) = (1 + w)\,\varepsilon(x_t, c) - w\,\varepsilon(x_t, \varnothing)
#   = \varepsilon(x_t, c) + w\,\big(\varepsilon(x_t, c) - \varepsilon(x_t, \varnothing)\big).$$
#
# $w = 0$ is the plain conditional model. For $w > 0$ we step from the conditional prediction further *away
# from the unconditional one*: whatever makes class $c$ different from the mixture is exaggerated. Since
# $\varepsilon$ is, up to the factor $-\sqrt{1 - \bar\alpha_t}$, the score $\nabla \log p(x_t)$, this is
# the score of $p(x_t \mid c)\, p(c \mid x_t)^w$: the samples are pushed towards where an implicit classifier
# is sure of $c$, i.e. away from the other shapes.
#
# **Cost.** Two predictions per step instead of one. `ddpm.samplers.classifier_free_guidance` runs them as
# one forward pass of a doubled batch ($x_t$ twice, labels $c$ then $\varnothing$) and splits the output;
# `ddpm.run.sample(..., label=c, guidance=w)` uses it.
#
# Flags: `--minutes M` (time budget of one call), `--steps N` (default: the preset's), `--restart` (retrain;
# otherwise an existing run in `--out/run` is resumed), `--n` (samples per panel) and `--sample-steps`
# (reverse steps, default all $T$).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import parse_args, wrote

from ddpm.data.toy import SHAPES3_CLASSES, shapes3, shapes3_curves
from ddpm.metrics.points import distance_to_spiral
from ddpm.plotting import points_gif, scatter_axes, scatter_row
from ddpm.presets import get_preset
from ddpm.run import load_run, sample, sampling_config
from ddpm.training import train

WEIGHTS = (0.0, 1.0, 3.0)


def _flags(parser):
    parser.add_argument("--minutes", type=float, default=None, help="training time budget of this call")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--restart", action="store_true", help="retrain instead of resuming a run in --out")
    parser.add_argument("--n", type=int, default=1000, help="samples per panel")
    parser.add_argument("--sample-steps", type=int, default=None, help="reverse steps (default: all T)")


args = parse_args("3_1_guidance_2d", "Classifier-free guidance on three overlapping 2-D shapes.", _flags)
out = args.out
cfg = get_preset("shapes3-cond")
cfg.train.max_minutes = args.minutes
if args.steps is not None:
    cfg.train.max_steps = args.steps
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, args.steps // 10))
cfg.train.sample_n = args.n  # the unconditional scatter train() draws at the end, in run/samples/
print(f"model {cfg.model.kwargs}, p_uncond = {cfg.diffusion.p_uncond}, T = {cfg.diffusion.T}")
print(f"training for at most {cfg.train.max_steps} steps of {cfg.train.batch_size} points")

# %% [markdown]
# ## The data
#
# Each class spans the whole square, so the three bounding boxes coincide.

# %%
x_data, y_data = shapes3(3000, seed=0)
real = [x_data[y_data == c] for c in range(3)]
fig, axes = plt.subplots(1, 4, figsize=(9.6, 2.6), dpi=100)
colours = ("#1f77b4", "#d62728", "#2ca02c")
for c, (name, colour) in enumerate(zip(SHAPES3_CLASSES, colours)):
    for ax in (axes[0], axes[c + 1]):
        ax.scatter(real[c][:, 0], real[c][:, 1], s=1.5, c=colour, linewidths=0, label=name)
    axes[c + 1].set_title(f"{c}: {name}", fontsize=9)
axes[0].set_title("shapes3 (all classes)", fontsize=9)
for ax in axes:
    ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", xticks=[], yticks=[])
fig.tight_layout()
fig.savefig(out / "data.png")
plt.close(fig)
wrote(out / "data.png")

# %% [markdown]
# ## Train
#
# The same engine as in part 1; the labels come with the data set and the label dropout is part of the
# loss (`ddpm.training.make_loss_fn`).

# %%
run_dir = out / "run"
metrics = train(cfg, run_dir, restart=args.restart)
print(f"step {metrics['step']}, {metrics['train_seconds']:.0f} s of training in all")
wrote(run_dir / "loss.png")
run = load_run(run_dir)
run.cfg = sampling_config(run.cfg, steps=args.sample_steps)

# %% [markdown]
# ## Without a label
#
# `label=None` feeds the "no label" index: the unconditional model, which should draw all three shapes at
# once. It is the weak part of the network: it saw only 15 % of the batches, and the mixture of three
# crossing curves is harder to learn than any one of them. Expect a fuzzy picture of all three.

# %%
unconditional = sample(run.cfg, run.model, run.schedule, args.n, seed=1).cpu()
wrote(
    scatter_row(
        out / "unconditional.png",
        [x_data[: args.n], unconditional],
        ["data (all classes)", "samples, no label"],
    )
)

# %% [markdown]
# ## Asking for a class, with and without guidance
#
# For each class and each $w$ we draw `--n` samples from the same noise (same seed), so the panels of a row
# differ only by the guidance. The class's real points are drawn in grey.

# %%
guided = {}
seconds = {}
for c in range(3):
    for w in WEIGHTS:
        t0 = time.perf_counter()
        guided[c, w] = sample(run.cfg, run.model, run.schedule, args.n, seed=2, label=c, guidance=w).cpu()
        seconds[w] = seconds.get(w, 0.0) + time.perf_counter() - t0

fig, axes = plt.subplots(3, len(WEIGHTS), figsize=(2.4 * len(WEIGHTS), 7.4), dpi=100, squeeze=False)
for c, name in enumerate(SHAPES3_CLASSES):
    for j, w in enumerate(WEIGHTS):
        title = f"{name}, w = {w:g}" + (" (no guidance)" if w == 0 else "")
        scatter_axes(axes[c, j], guided[c, w], real[c], title, s=1.5)
fig.tight_layout()
fig.savefig(out / "guidance_grid.png")
plt.close(fig)
wrote(out / "guidance_grid.png")
for w in WEIGHTS:
    print(f"sampling time, w = {w:g}: {seconds[w] / 3:.2f} s per class")

# %% [markdown]
# The doubled batch saves a second call per step, not the arithmetic: on a CPU the work grows with the
# batch, and a guided draw takes two to three times as long as one with $w = 0$.
#
# ## How close to the right shape?
#
# Two numbers per class and $w$:
#
# * **distance to its own curve**: the mean distance of the class-$c$ samples to the continuous curve of
#   class $c$ (exact for the spiral, `ddpm.metrics.points.distance_to_spiral`; for the s-curve and the
#   moons the distance to a dense polyline from `shapes3_curves`, accurate to within $5 \cdot 10^{-4}$);
# * **nearer another curve**: the fraction of the class-$c$ samples that lie closer to the curve of another
#   class than to their own: samples the model drew from the wrong shape (or far off every shape). The data
#   itself scores about 0 on both.

# %%
curves = [torch.from_numpy(c) for c in shapes3_curves()]


def curve_distances(points: torch.Tensor) -> torch.Tensor:
    """(N, 3): each point's distance to each class's curve (in chunks: the polylines have 20,000 points)."""
    points = points.double()
    cols = [torch.from_numpy(distance_to_spiral(points.numpy()))]
    for curve in curves[1:]:
        cols.append(torch.cat([torch.cdist(p, curve).min(1).values for p in points.split(256)]))
    return torch.stack(cols, 1)


def scores(points: torch.Tensor, c: int) -> tuple[float, float]:
    d = curve_distances(points)
    return d[:, c].mean().item(), (d.argmin(1) != c).double().mean().item()


print(f"{'class':8s} {'w':>4s} {'distance to its own curve':>26s} {'nearer another curve':>21s}")
for c, name in enumerate(SHAPES3_CLASSES):
    for w in WEIGHTS:
        dist, wrong = scores(guided[c, w], c)
        print(f"{name:8s} {w:4g} {dist:26.4f} {wrong:21.3f}")
dist_u = curve_distances(unconditional).min(1).values.mean().item()
print(f"unconditional samples: mean distance to the nearest of the three curves {dist_u:.4f}")

# %% [markdown]
# What to expect (one full run, 4,000 steps; yours will differ a little): the fraction of samples nearer
# another curve falls from $w = 0$ to $w = 1$ for every class, from 0.10–0.17 to 0.03–0.06, and for the
# spiral and the s-curve further at $w = 3$ (to 0.03 and 0.01). That is what guidance is for. The distance
# to the own curve also falls from $w = 0$ to $w = 1$, but at $w = 3$ it rises again, for the spiral and
# the s-curve above $w = 0$. Guidance overshoots: at every step the guided guess of $x_0$ is
# $\hat x_0(c) + w\,(\hat x_0(c) - \hat x_0(\varnothing))$, the conditional guess pushed *past* itself,
# away from the unconditional one, by $w$ times their gap. On a curve of zero width any gap puts the sample
# off the curve, and the errors of both predictions are magnified too (the unconditional one is poor, see
# above). The extrapolated $\tilde\varepsilon$ is not the prediction of any distribution the network
# learned: strong guidance buys certainty about the class at the price of fidelity to it, and of variety —
# at $w = 3$ each shape shows gaps where another shape crosses it, the places where the implicit classifier
# $p(c \mid x_t)$ is least sure.
#
# ## One class as $w$ grows
#
# The s-curve from one fixed set of noises, for $w$ from 0 to 4: the same samples, moved by guidance.

# %%
sweep_w = np.linspace(0.0, 4.0, 9)
n_sweep = min(args.n, 500)
sweep = [
    sample(run.cfg, run.model, run.schedule, n_sweep, seed=3, label=1, guidance=float(w)).cpu()
    for w in sweep_w
]
titles = [f"s-curve, w = {w:g}" for w in sweep_w]
wrote(points_gif(out / "guidance_sweep.gif", sweep, titles, duration_ms=400))
wrote(scatter_row(out / "guidance_sweep.png", sweep[::2], titles[::2], reference=real[1]))
for w, pts in zip(sweep_w, sweep):
    dist, wrong = scores(pts, 1)
    print(f"s-curve, w = {w:4.1f}: distance to its own curve {dist:.4f}, nearer another curve {wrong:.3f}")
