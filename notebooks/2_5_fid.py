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
# # 2.5 Is it any good? The Fréchet LeNet Distance
#
# Looking at a grid of samples tells us a lot, but not how much better one model is than another. The
# Fréchet Inception Distance (FID, Heusel et al. 2017) gives a number: pass real and generated images
# through a trained classifier, take the features of its last hidden layer, fit a Gaussian to each set,
# and measure the distance between the two Gaussians,
#
# $$d^2 = \lVert\mu_1 - \mu_2\rVert^2 + \mathrm{Tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2}).$$
#
# The first term compares where the two clouds of features sit, the second how they spread. The matrix
# square root is a real one: $(\Sigma_1\Sigma_2)^{1/2}$ is the matrix whose square is $\Sigma_1\Sigma_2$,
# not the element-wise square root (`ddpm/metrics/frechet.py` computes it through a symmetric
# eigen-decomposition, and its tests catch the element-wise mistake).
#
# For digits the series replaces Inception by the LeNet5 of notebook 2.4 and its 84 features: the
# **Fréchet LeNet Distance** (FLD). A distance estimated from N samples is biased upwards, by more for
# smaller N, so we always show it beside two references at the same N: N real *training* digits (the best a
# model can hope for: the floor) and N images of uniform *noise* (the worst).
#
# Flags: `--run RUN` measures an already trained run (for example `ddpm train mnist-unet --out RUN`);
# without it the notebook trains the series' time-conditioned UNet (`mnist-time`) for `--minutes`, as in
# 2.2. `--n` samples (default 2,000) with `--sample-steps` reverse steps. `ddpm eval RUN` computes the same
# numbers (and standard FID with `--fid`) from the command line.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import mnist_setup, open_run, train_run, wrote


def flags(parser):
    parser.add_argument("--run", type=Path, help="a trained MNIST run to measure (default: train one)")
    parser.add_argument("--n", type=int, default=2000, help="samples to measure")


args, out, cfg = mnist_setup(
    "2_5_fid", "Measure generated digits: FLD, its references, classes.", "mnist-time", flags
)

from ddpm.data import images  # noqa: E402
from ddpm.metrics import fld  # noqa: E402
from ddpm.metrics.frechet import gaussian_statistics  # noqa: E402
from ddpm.metrics.lenet import lenet_features, lenet_predict, load_lenet  # noqa: E402
from ddpm.plotting import labelled_grid  # noqa: E402
from ddpm.run import sample, sampling_config  # noqa: E402

# %% [markdown]
# ## The classifier
#
# LeNet5 trained on MNIST (notebook 2.4), cached after its first training next to the data.

# %%
lenet = load_lenet("mnist", root=cfg.data.root, cache_dir=images.data_root(cfg.data.root))
print(f"LeNet5: {lenet.test_accuracy:.2%} test accuracy ({lenet.path})")
classifier = lenet.model

# %% [markdown]
# ## The model and its samples

# %%
run_dir = args.run if args.run else train_run(cfg, out, args.restart)
run, device, test_x = open_run(run_dir)
run.cfg = sampling_config(run.cfg, steps=args.sample_steps)
x = sample(run.cfg, run.model, run.schedule, args.n, seed=0).cpu().clamp(-1, 1)

# %% [markdown]
# ## FLD and its references
#
# The reference Gaussian is fitted to the 10,000 test digits. Each set of N images is compared with it.

# %%
train_x = images.to_tensor(images.load("mnist", "train", root=cfg.data.root)[0])
reference = gaussian_statistics(lenet_features(classifier, test_x))
scores = {
    "generated": fld.fld(lenet_features(classifier, x), reference),
    "training (floor)": fld.fld(lenet_features(classifier, fld.random_subset(train_x, args.n)), reference),
    "uniform noise": fld.fld(
        lenet_features(classifier, fld.uniform_noise_images(args.n, (1, 28, 28))), reference
    ),
}
for name, value in scores.items():
    print(f"FLD {name:18s} {value:10.3f}   (N = {args.n})")

fig, ax = plt.subplots(figsize=(5, 3.2))
bars = ax.bar(list(scores), list(scores.values()), color=["tab:blue", "tab:green", "tab:gray"])
ax.bar_label(bars, fmt="%.2f")
ax.set_yscale("log")
ax.set_ylabel("FLD against the test set (log scale)")
ax.set_title(f"N = {args.n} images each")
fig.tight_layout()
fig.savefig(out / "fld_bars.png")
plt.close(fig)
wrote(out / "fld_bars.png")

# %% [markdown]
# ## Why N must be stated
#
# The floor, N real training digits against the test set, for growing N: the estimate falls towards the
# true distance (near zero, since train and test come from one distribution) roughly like 1/N.

# %%
sizes = [n for n in (100, 250, 500, 1000, 2500, 5000, 10000) if n <= len(train_x)]
floor = [fld.fld(lenet_features(classifier, fld.random_subset(train_x, n, seed=1)), reference) for n in sizes]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.loglog(sizes, floor, "o-")
ax.set_xlabel("N (training images)")
ax.set_ylabel("FLD(train, test)")
ax.set_title("Fewer samples: a worse FLD for the same data")
fig.tight_layout()
fig.savefig(out / "fld_vs_n.png")
plt.close(fig)
wrote(out / "fld_vs_n.png")

# %% [markdown]
# ## Which digits does the model draw?
#
# LeNet's verdict on every sample: the histogram should be flat (each digit a tenth of the time); its
# entropy is ln 10 ≈ 2.303 nats when it is, and falls when the model favours some digits.

# %%
predicted = lenet_predict(classifier, x)
histogram = fld.class_histogram(predicted, 10)
print(f"class entropy {fld.class_entropy(predicted, 10):.3f} nats (uniform: {np.log(10):.3f})")
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(range(10), histogram)
ax.axhline(0.1, color="k", lw=0.8, ls="--")
ax.set_xticks(range(10))
ax.set_xlabel("digit predicted by LeNet5")
ax.set_ylabel("fraction of samples")
fig.tight_layout()
fig.savefig(out / "class_histogram.png")
plt.close(fig)
wrote(out / "class_histogram.png")

# %% [markdown]
# The samples sorted by LeNet's verdict, one row per digit (an empty cell: fewer samples of that digit).

# %%
per_row = 10
rows = []
for digit in range(10):
    chosen = x[torch.as_tensor(predicted == digit)][:per_row]
    pad = torch.full((per_row - len(chosen), *x.shape[1:]), -1.0)
    rows.append(torch.cat([chosen, pad]))
wrote(
    labelled_grid(
        out / "samples_by_class.png",
        torch.cat(rows),
        per_row,
        row_labels=[str(d) for d in range(10)],
        title="samples, one row per predicted digit",
    )
)
