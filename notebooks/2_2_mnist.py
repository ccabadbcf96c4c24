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
# # 2.2 The same UNet, told the time
#
# Notebook 2.1 trained the series' small UNet without telling it $t$: it had to guess how noisy $x_t$ is
# from the image alone. Here the network is the same except for one addition, the **time embedding**
# (preset `mnist-time`, `SeriesUNet(time_conditioning=True)`):
#
# 1. the step $t$ is turned into a vector of 32 numbers by the **sinusoidal embedding** of the Transformer
#    (Vaswani et al. 2017, sec. 3.5; used by Ho et al. 2020): sines and cosines of $t$ at geometrically
#    spaced frequencies, so that nearby steps get similar vectors and the network can read $t$ at every
#    scale, from "early or late" down to single steps;
# 2. a small MLP (Linear → SiLU → Linear) turns that into a learned feature vector;
# 3. **every block** of the UNet projects it with its own linear layer to one number per channel and adds
#    it to its feature maps (after the GroupNorm, before the SiLU), so each layer can behave differently at
#    different noise levels — e.g. smooth strongly when $x_t$ is almost pure noise, and touch only fine
#    detail when $t$ is small.
#
# That costs about 7k parameters (61k against 54k). The network now learns
# $\mathbb{E}[\varepsilon \mid x_t, t]$, the quantity the sampler actually needs, instead of an average over
# every $t$ the image could have come from.
#
# Flags as in 2.1: `--minutes M` (default 3; re-running resumes the run in `--out/run` and trains `M` more
# minutes, `--restart` starts over), `--steps N` (the step budget and end of the learning-rate decay),
# `--samples`, `--sample-steps`; and `--compare DIR`, the run folder of notebook 2.1 (default: next to this
# notebook's output, `out/2_1_mnist/run`), for the comparison at the end.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from _common import denoising_figure, mnist_setup, open_run, reverse_process_figures, train_run, wrote

from ddpm.diffusion import training_loss
from ddpm.run import RunError, load_run


def _flags(parser):
    parser.add_argument("--compare", type=Path, default=None, help="run folder of notebook 2.1 to compare")


args, out, cfg = mnist_setup(
    "2_2_mnist", "MNIST with the series' UNet with a time embedding.", "mnist-time", _flags
)

# %% [markdown]
# ## Train
#
# Exactly as in 2.1: `ddpm.training.train` on MNIST's 60,000 training digits, AdamW with warm-up and cosine
# decay, an EMA of the weights for sampling, and the same linear schedule with $T = 1000$. With the same
# `--minutes` both notebooks train about the same number of steps (the time embedding costs little).

# %%
run_dir = train_run(cfg, out, args.restart)

# %% [markdown]
# The loss falls fast at first and then slowly, and still stays well above zero: at small $t$ the noise is
# a tiny perturbation that no network can fully tell apart from the digit's own detail. Knowing $t$ does not
# remove that uncertainty, but it tells the network how much noise to look for. Where that helps most is
# measured at the end of the notebook.

# %% [markdown]
# ## Denoising test digits at several noise levels
#
# We take 8 digits the network has never seen, noise them with `q_sample` to the paper's step $t$ (array
# index $t - 1$), and read the network's output as a guess of the clean digit with `x0_eps_from_output`
# (eq. 15, clipped to the data range as the sampler does). Each pair of rows is the noisy input $x_t$ and
# the guess $\hat x_0$; the top row is the original.

# %%
run, device, test_set = open_run(run_dir)
denoising_figure(run, test_set[:8].to(device), out)

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
samples = reverse_process_figures(run, args.samples, args.sample_steps, out)

# %% [markdown]
# Watch `reverse_x0_guess.gif`. In the first steps $\sqrt{\bar\alpha_t}$ is tiny, eq. 15 blows every error of
# $\hat\varepsilon$ up and the (clipped) guess is black-and-white speckle; that does no harm, since the
# posterior mean gives $\hat x_0$ just as tiny a weight there. As the noise falls the guess becomes a blurry
# blob, then commits to strokes, and the state follows it. Compare `samples.png` with that of notebook 2.1
# (trained for the same time): every sample now ends on a clean background, as strokes and loops, though
# after a few minutes of CPU training only a few of them read as digits.
#
# ## Compared with 2.1: the error at each noise level
#
# The training loss averages over all $t$. To see *where* the time helps, we measure it at one $t$ at a
# time: noise 256 test digits to step $t$ and take the mean squared error of the predicted noise
# (`ddpm.diffusion.training_loss`, the loss of eq. 14 at a fixed $t$), for this run and for the run of
# notebook 2.1, with the very same noise for both. Both use the linear schedule, so the same $t$ means the
# same noise level. The comparison is only fair if both were trained about as long: their steps are
# printed (for equal steps, run both notebooks with the same `--steps` and enough `--minutes`).

# %%
T_eval = [1, 5, 10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
runs = {"with time (2.2)": run}
compare_dir = args.compare or out.parent / "2_1_mnist" / "run"
try:
    runs = {"without time (2.1)": load_run(compare_dir), **runs}
except RunError as e:
    print(f"no run of notebook 2.1 to compare with ({e}); run 2_1_mnist.py first or pass --compare DIR")


@torch.no_grad()
def error_by_t(run, x0, steps, seed=0):
    """The loss of eq. 14 at each paper step t (array index t − 1), the same noise for every run."""
    g = torch.Generator().manual_seed(seed)
    errors = []
    for t in steps:
        tt = torch.full((len(x0),), t - 1, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        loss = training_loss(run.model, x0, tt, noise, run.schedule, run.cfg.diffusion.prediction)
        errors.append(loss.mean().item())
    return errors


x_eval = test_set[:256].to(device)
errors = {name: error_by_t(r, x_eval, T_eval) for name, r in runs.items()}
print(f"{'t':>5s}" + "".join(f"{f'{name}, step {r.step}':>32s}" for name, r in runs.items()))
for k, t in enumerate(T_eval):
    print(f"{t:5d}" + "".join(f"{errors[name][k]:32.4f}" for name in runs))
fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
for name, r in runs.items():
    ax.plot(T_eval, errors[name], "o-", ms=3, label=f"{name}, step {r.step}")
ax.set(xscale="log", yscale="log", xlabel="t", ylabel=r"$\|\varepsilon - \hat\varepsilon\|^2$ per pixel")
ax.set_title("noise-prediction error on test digits, by noise level", fontsize=10)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "error_by_t.png")
plt.close(fig)
wrote(out / "error_by_t.png")

# %% [markdown]
# In our 3-minute CPU runs (663 steps without time, 828 with) the time-conditioned network has the lower
# error at every $t$: by 10–20 % at small and medium $t$, and by more than half for $t \ge 700$; after
# 3,000 steps each (on a GPU) the picture is the same: about 10 % lower up to $t = 500$ and 40–50 % lower
# for $t \ge 800$. That is where $x_t$ is almost pure noise and only $t$ says how much of a digit is still
# hidden in it — and where eq. 15 divides by a small $\sqrt{\bar\alpha_t}$ and sampling decides a digit's
# overall shape. It shows in the samples: many of 2.1's keep a grey, noisy background or never leave the
# noise (the network removed less noise than was there), while 2.2's all end on a clean black background.
#
# Both networks are still tiny and briefly trained. Notebook 2.3 replaces the network itself.
