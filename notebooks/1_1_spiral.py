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
# # 1.1 The spiral: a data set we can see
#
# A diffusion model learns a probability distribution from samples of it. Images are where diffusion
# models shine, but an image has hundreds of dimensions and we cannot *look* at its distribution. So
# part 1 of the series starts in two dimensions: every data point is a point $x_0 \in \mathbb{R}^2$, a
# whole data set is a scatter plot, and we can watch every step of the model with our own eyes.
#
# Everything shown here comes from the library (`ddpm.data.toy`); the notebook only draws it.
#
# Run it as a script with `python notebooks/1_1_spiral.py --out DIR`, or open it as a notebook
# (jupytext percent format).

# %%
import matplotlib.pyplot as plt
import numpy as np
from _common import parse_args, wrote

from ddpm.data.toy import THETA_MAX, THETA_MIN, TOY_DATASETS, make_toy, spiral, spiral_curve
from ddpm.plotting import scatter_axes, scatter_row

args = parse_args("1_1_spiral", "The spiral data set and the other 2-D toy sets.")
out = args.out

# %% [markdown]
# ## The spiral
#
# Draw an angle $\theta \sim \mathcal{U}[1.5\pi, 4.5\pi]$ and take the point
# $(\theta\cos\theta,\ \theta\sin\theta)$: one and a half turns of an Archimedean spiral. Each coordinate
# is then mapped affinely onto $[-1, 1]$, the range the diffusion process assumes for its data (Ho et al.
# 2020 scale images to $[-1, 1]$ too, sec. 3.3). The map is fixed (it uses the extremes of the continuous
# curve, not of the sample), so every draw lands on exactly the same curve.

# %%
print(f"theta range: [{THETA_MIN / np.pi:.1f} pi, {THETA_MAX / np.pi:.1f} pi]")
x0 = spiral(10_000, seed=0)
print(f"{tuple(x0.shape)} points, dtype {x0.dtype}")
print(f"x in [{x0[:, 0].min():.3f}, {x0[:, 0].max():.3f}], y in [{x0[:, 1].min():.3f}, {x0[:, 1].max():.3f}]")

# %% [markdown]
# The distribution we want to learn is *singular*: all its mass sits on a one-dimensional curve, and
# it has no density in the plane. That makes it a demanding test — a generative model that is only
# roughly right puts its points *near* the curve, and we can measure exactly how near (notebook 1.3).
#
# Real data is rarely so clean, so the toy sets also take a `noise` argument: isotropic Gaussian noise of
# that standard deviation added after scaling, which blurs the curve into a band.

# %%
theta = np.linspace(THETA_MIN, THETA_MAX, 2000)
cx, cy = spiral_curve(theta)
noisy = spiral(10_000, seed=0, noise=0.05)

fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.7), dpi=100)
axes[0].scatter(cx, cy, c=theta, cmap="viridis", s=3, linewidths=0)
axes[0].set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", xticks=[], yticks=[])
axes[0].set_title(r"the curve, coloured by $\theta$ (1.5$\pi$ → 4.5$\pi$)", fontsize=9)
scatter_axes(axes[1], x0, title="10,000 samples, no noise")
scatter_axes(axes[2], noisy, title="with noise = 0.05")
for ax in axes[1:]:
    ax.plot(cx, cy, lw=0.6, c="k", alpha=0.5)
fig.tight_layout()
fig.savefig(out / "spiral.png")
plt.close(fig)
wrote(out / "spiral.png")

# %% [markdown]
# ## The other toy data sets
#
# The same recipe works on any 2-D distribution. The library ships a few classics, all scaled to about
# $[-1, 1]$: two moons, the S curve, a swiss roll (the same curve as the spiral, but sampled evenly along
# its length rather than evenly in angle, so its outer turn is denser) and a mixture of eight Gaussians.
# The eight Gaussians test something different from the curves: whether a model finds *all* the separate
# modes and gives each its fair share of points.

# %%
names = list(TOY_DATASETS)
panels = [make_toy(name, 4000, seed=0) for name in names]
titles = [name.replace("_", " ") for name in names]
path = scatter_row(out / "toy_datasets.png", panels, titles)
wrote(path)

# %%
noisy_panels = [make_toy(name, 4000, seed=0, noise=0.05) for name in names]
path = scatter_row(out / "toy_datasets_noisy.png", noisy_panels, [f"{t}, noise 0.05" for t in titles])
wrote(path)

# %% [markdown]
# Next, notebook 1.2 destroys this structure on purpose, step by step, with Gaussian noise: the forward
# process of a diffusion model.
