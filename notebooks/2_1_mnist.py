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
# # 2.1 MNIST with a small UNet that is not told the time
#
# Part 1 generated 2-D points. Part 2 generates images: 28×28 handwritten digits from MNIST, scaled to
# $[-1, 1]$. Nothing of the diffusion maths changes. An image is a point in a 784-dimensional space, the
# forward process $q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$ (eq. 4) noises
# every pixel independently, the network is trained with the same loss $\|\varepsilon -
# \varepsilon_\theta(x_t, t)\|^2$ (eq. 14) and we sample with the same Algorithm 2. Only the network changes.
#
# An MLP on 784 numbers would have to learn from scratch that neighbouring pixels belong together. A
# convolutional **UNet** has that built in: an encoder of 3×3 convolutions that halves the image twice
# (28 → 14 → 7 pixels, with 16 → 32 → 64 channels), so that the deepest features see the whole digit, and
# a decoder that up-samples back to 28×28. *Skip connections* hand each encoder level's features straight
# to the decoder level of the same size, so fine detail (where exactly the stroke is) need not squeeze
# through the 7×7 bottleneck. Every block is convolution → GroupNorm → SiLU; the output is a 28×28 map, the
# predicted noise $\hat\varepsilon$. This is the series' small UNet, `ddpm.models.series_unet.SeriesUNet`,
# about 54k parameters.
#
# ## What the network does not know
#
# In this first version the network is **not told $t$**: preset `mnist-tiny` builds it with
# `time_conditioning=False`, and it ignores the $t$ it is handed. It sees only $x_t$, and has to predict
# the noise in it. But how much noise is in $x_t$ — that is, how large is $\sqrt{1-\bar\alpha_t}$ — it
# must work out from the image itself, for instance from how grainy the background is, which is a flat
# $-1$ in every clean MNIST digit. So at best it learns $\mathbb{E}[\varepsilon \mid x_t]$, averaged over
# every $t$ that could have produced this $x_t$, instead of $\mathbb{E}[\varepsilon \mid x_t, t]$. Why that
# hurts:
#
# * **Near $t = T$, images at different $t$ look alike.** $x_{700}$ and $x_{1000}$ are both almost pure
#   noise, but the amount of digit left in them differs (by a factor of ~13 in $\sqrt{\bar\alpha_t}$ for the
#   linear schedule: 0.084 against 0.0064). The sampler turns $\hat\varepsilon$ into the guess
#   $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ (eq. 15), which divides
#   by that small $\sqrt{\bar\alpha_t}$: a noise prediction tuned for the wrong $t$ is amplified into a
#   wrong $\hat x_0$, exactly in the early steps that decide the digit's overall shape.
# * **Near $t = 0$ the noise is faint** and hard to tell apart from the texture of the strokes, so the
#   network cannot be sure how much to remove.
# * **Capacity**: part of a small network goes into estimating the noise level, a number the sampler knows
#   exactly and could simply have told it.
#
# Notebook 2.2 gives the same network the time and compares.
#
# Flags: `--minutes M` is the training budget of this invocation (default 3; the run folder `--out/run` is
# resumed when you re-run, so each call trains `M` more minutes, and `--restart` starts over); `--steps N`
# the step budget, which is also where the learning rate's cosine decay ends (default: the preset's 3000);
# `--samples` and `--sample-steps` set how many digits are generated and with how many reverse steps.

# %%
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import parse_args, wrote

from ddpm.data import load_dataset
from ddpm.diffusion import q_sample, x0_eps_from_output
from ddpm.models import count_parameters
from ddpm.plotting import grid_gif, grid_image, loss_curve, save_grid
from ddpm.presets import get_preset
from ddpm.run import load_run, sample, train


def _flags(parser):
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget of this call")
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: the preset's)")
    parser.add_argument("--restart", action="store_true", help="retrain instead of resuming a run in --out")
    parser.add_argument("--samples", type=int, default=36, help="digits generated from noise")
    parser.add_argument("--sample-steps", type=int, default=100, help="reverse steps when sampling")
    parser.add_argument("--log-every", type=int, default=5, help="steps per point of the loss curve")


args = parse_args("2_1_mnist", "MNIST with the series' UNet without time conditioning.", _flags)
out = args.out
cfg = get_preset("mnist-tiny")
cfg.train.max_minutes = args.minutes
if args.steps is not None:
    cfg.train.max_steps = args.steps
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, args.steps // 10))
cfg.train.log_every = args.log_every
cfg.train.sample_n = args.samples  # the grid train() draws at the end, in run/samples/
cfg.sample.steps = args.sample_steps
print(f"model {cfg.model.name} {cfg.model.kwargs}, {cfg.diffusion.schedule} schedule, T = {cfg.diffusion.T}")
print(f"training for up to {args.minutes} minutes, at most {cfg.train.max_steps} steps")

# %% [markdown]
# ## Train
#
# `ddpm.run.train` is the engine of part 1: it loads MNIST's 60,000 training digits, trains with AdamW
# (warm-up, then cosine decay) and keeps an exponential moving average (EMA) of the weights, which is what
# we sample with. A few CPU minutes is a very short training — a GPU does thousands of steps in that time —
# so expect blurry digits; re-run the notebook to train longer.

# %%
run_dir = out / "run"
metrics = train(cfg, run_dir, restart=args.restart)
print(f"step {metrics['step']}, {metrics['train_seconds']:.0f} s of training in all")
if (run_dir / "metrics.csv").exists():
    wrote(loss_curve(out / "loss.png", run_dir / "metrics.csv"))

# %% [markdown]
# The loss falls fast at first — predicting "no digit, just noise" is easy — and then slowly. It stays far
# from zero: at small $t$ the noise is a tiny perturbation that cannot be told apart from the digit's own
# detail, and without $t$ the network does not even know how much of it to expect.

# %% [markdown]
# ## Denoising test digits at several noise levels
#
# We take 8 digits the network has never seen, noise them with `q_sample` to the paper's step $t$ (array
# index $t - 1$), and read the network's output as a guess of the clean digit with `x0_eps_from_output`
# (eq. 15, clipped to the data range as the sampler does). Each pair of rows is the noisy input $x_t$ and
# the guess $\hat x_0$; the top row is the original.

# %%
run = load_run(run_dir)
device = next(run.model.parameters()).device
print(f"loaded {run.checkpoint} (step {run.step}): {count_parameters(run.model):,} parameters")
T = run.schedule.T
test = load_dataset(run.cfg.data, split="test").x[:8].to(device)
noise_steps = [round(f * T) for f in (0.05, 0.2, 0.4, 0.6, 0.8)]  # paper steps 50 … 800 for T = 1000


def labelled_grid(path, images, nrow, row_labels=(), col_labels=(), title=None) -> Path:
    """An image grid (``grid_image``) with a label for each row and, on top, each column."""
    cell, rows = images.shape[-1] + 2, math.ceil(len(images) / nrow)  # grid_image pads by 2 pixels
    fig, ax = plt.subplots(figsize=(1.4 + 0.5 * nrow, 0.5 + 0.5 * rows), dpi=100)
    ax.imshow(np.asarray(grid_image(images, nrow)), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([cell * (r + 0.5) + 1 for r in range(len(row_labels))], row_labels, fontsize=8)
    ax.set_xticks([cell * (c + 0.5) + 1 for c in range(len(col_labels))], col_labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def denoise(run, x0, steps, seed=0):
    """For each paper step t: noise x0 to x_t (eq. 4) and the model's guess x̂_0 (eq. 15)."""
    g = torch.Generator().manual_seed(seed)
    d = run.cfg.diffusion
    pairs = []
    for t in steps:
        tt = torch.full((len(x0),), t - 1, dtype=torch.long, device=x0.device)
        x_t = q_sample(x0, tt, run.schedule, torch.randn(x0.shape, generator=g).to(x0.device))
        output = run.model(x_t, tt.float())
        pairs.append((x_t, x0_eps_from_output(output, x_t, tt, run.schedule, d.prediction, d.clip_x0)[0]))
    return pairs


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

# %% [markdown]
# At small $t$ the guess is close to the original. As $t$ grows, less of the digit survives in $x_t$ and the
# guess turns into a blurry average of the digits that could be hidden under that noise; by $t = 800$
# ($\sqrt{\bar\alpha_t} \approx 0.04$ for the linear schedule) very little is left to recover. Blurry guesses
# at large $t$ are what a good model *should* produce — the mean of many possible digits is blurry — while
# sampling commits to one digit a little at a time.

# %% [markdown]
# ## Generating digits from pure noise
#
# `sample` runs Algorithm 2 from $x_T \sim \mathcal{N}(0, I)$. To keep it cheap on a CPU we take
# `--sample-steps` evenly spaced steps out of the $T = 1000$ (each step then draws from the posterior
# between two non-adjacent steps, Nichol & Dhariwal 2021, sec. 4). Its `callback(i, t, x, x0)` sees every
# intermediate state and the current guess $\hat x_0$, which we keep for a GIF.

# %%
run.cfg.sample.steps = args.sample_steps
states, guesses, seen_t = [], [], []


def collect(i, t, x, x0):
    """Called after reverse step i, taken from array index t: x is the new state, x0 the guess made at t."""
    states.append(x.cpu().clone())
    guesses.append(x0.cpu().clone())
    seen_t.append(t)


samples = sample(run.cfg, run.model, run.schedule, args.samples, seed=1, callback=collect).cpu()
wrote(save_grid(out / "samples.png", samples))
# The GIFs show the first 16 samples in about 30 frames (all frames of all samples would be megabytes).
frames = sorted({*range(0, len(states), max(1, len(states) // 30)), len(states) - 1})
wrote(grid_gif(out / "reverse_process.gif", [states[i][:16] for i in frames]))
wrote(grid_gif(out / "reverse_x0_guess.gif", [guesses[i][:16] for i in frames]))

# Snapshots of the first 4 samples: in each column the state x_t and the guess x̂_0 the model makes from it.
cols = sorted({round(k) for k in np.linspace(1, len(states) - 1, 8)})
snap = [torch.stack([states[i - 1][j], guesses[i][j]]) for j in range(min(4, args.samples)) for i in cols]
snap = torch.stack(snap).reshape(-1, len(cols), 2, *samples.shape[1:]).transpose(1, 2).flatten(0, 2)
wrote(
    labelled_grid(
        out / "reverse_snapshots.png",
        snap,
        len(cols),
        [r"$x_t$", r"$\hat x_0$"] * min(4, args.samples),
        [f"t={seen_t[i] + 1}" for i in cols],
        title="reverse process: state and guess",
    )
)

# %% [markdown]
# Watch `reverse_x0_guess.gif`. In the first steps $\sqrt{\bar\alpha_t}$ is tiny, eq. 15 blows every error of
# $\hat\varepsilon$ up and the (clipped) guess is black-and-white speckle; that does no harm, since the
# posterior mean gives $\hat x_0$ just as tiny a weight there. As the noise falls the guess becomes a blurry
# blob, then commits to strokes, and the state follows it. After a few minutes of training the results are
# blobs and stroke fragments that only sometimes read as digits, and the missing time shows: many samples
# keep a grey, noisy background, and some never leave the noise at all — the network, unsure how much noise
# is left, removed too little of it. Notebook 2.2 trains the same network, told the time, and compares the
# two at every noise level.
