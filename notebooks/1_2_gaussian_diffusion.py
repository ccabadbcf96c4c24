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
# # 1.2 Gaussian diffusion: destroying the spiral, one small step at a time
#
# A diffusion model has two halves. The **forward process** $q$ is fixed, has no parameters, and slowly
# turns data into noise. The **reverse process** $p_\theta$ is learned, and turns noise back into data.
# This notebook is all about $q$: what it does to the spiral, the closed form that lets us jump to any
# step, and the posterior $q(x_{t-1} \mid x_t, x_0)$ that the reverse process will imitate.
#
# Equation numbers refer to Ho et al. 2020, *Denoising Diffusion Probabilistic Models*. All the maths is
# imported from the library: `ddpm.diffusion` (torch) and, side by side, `ddpm.reference_numpy`, a plain
# NumPy transcription of the same equations that we use as an independent cross-check.

# %%
import numpy as np
import torch
from _common import parse_args, wrote

from ddpm import diffusion
from ddpm import reference_numpy as ref
from ddpm.data.toy import spiral
from ddpm.metrics.points import energy_distance
from ddpm.plotting import points_gif, scatter_row
from ddpm.schedules import make_schedule

args = parse_args("1_2_gaussian_diffusion", "The forward process, its closed form and the posterior.")
out = args.out
T = 1000
N = 2000  # points drawn for the pictures
x0 = spiral(N, seed=0)

# %% [markdown]
# ## One step of noise (eq. 2)
#
# The forward process is a Markov chain. Each step shrinks the point a little towards the origin and adds
# a little Gaussian noise:
#
# $$q(x_t \mid x_{t-1}) = \mathcal{N}\big(x_t;\ \sqrt{1-\beta_t}\, x_{t-1},\ \beta_t I\big),
# \qquad x_t = \sqrt{1-\beta_t}\, x_{t-1} + \sqrt{\beta_t}\, \varepsilon,
# \quad \varepsilon \sim \mathcal{N}(0, I).$$
#
# The shrink factor $\sqrt{1-\beta_t}$ is what keeps the process from blowing up: if $x_{t-1}$ has unit
# variance, so does $x_t$, because $(1-\beta_t) + \beta_t = 1$. The *variance schedule*
# $\beta_1, \dots, \beta_T$ says how much noise each step adds. Ho et al. use $T = 1000$ and $\beta_t$
# rising linearly from $10^{-4}$ to $0.02$ (sec. 4); Nichol & Dhariwal 2021 proposed the cosine schedule,
# which we compare with throughout (notebook 1.4 plots every coefficient of both).
#
# Running the chain is just a loop over `diffusion.q_step`. Note the indexing: the library's arrays are
# 0-based, so index `i` is the paper's step $t = i + 1$.

# %%
schedules = {"linear": make_schedule("linear", T), "cosine": make_schedule("cosine", T)}
for name, s in schedules.items():
    print(
        f"{name:6s}: beta_1 = {s.betas[0]:.2e}, beta_T = {s.betas[-1]:.3f}, "
        f"alpha_bar_T = {s.alpha_bar[-1]:.2e}"
    )


def run_chain(x_start, schedule, keep, seed=1):
    """Iterate eq. 2 from x_0 to x_T; returns {t: x_t} for the paper's steps t in ``keep`` (0 = x_0)."""
    gen = torch.Generator().manual_seed(seed)
    x, frames = x_start.clone(), {0: x_start.clone()}
    for i in range(schedule.T):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        x = diffusion.q_step(x, t, schedule, torch.randn(x.shape, generator=gen, dtype=x.dtype))
        if i + 1 in keep:
            frames[i + 1] = x.clone()
    return frames


# Frames are denser early on, where the picture changes fastest.
gif_steps = {*range(0, 60, 5), *range(60, 200, 20), *range(200, T + 1, 200)}
for name, s in schedules.items():
    frames = run_chain(x0, s, gif_steps)
    path = points_gif(
        out / f"forward_{name}.gif",
        list(frames.values()),
        [f"{name}: t = {t}" for t in frames],
        duration_ms=60,
    )
    wrote(path)

# %% [markdown]
# The spiral dissolves into a round blob: after $T$ steps only noise is left. For the linear schedule
# the structure is gone well before the end; the cosine schedule keeps it longer.

# %% [markdown]
# ## Jumping straight to step t (eq. 4)
#
# Training needs $x_t$ for random $t$, and looping through $t$ steps each time would be slow. Because a
# sum of independent Gaussians is Gaussian, the $t$ steps collapse into one. Write $\alpha_t = 1 - \beta_t$
# and $\bar\alpha_t = \prod_{s=1}^{t} \alpha_s$; then
#
# $$q(x_t \mid x_0) = \mathcal{N}\big(x_t;\ \sqrt{\bar\alpha_t}\, x_0,\ (1-\bar\alpha_t) I\big),
# \qquad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\, \varepsilon .$$
#
# $\sqrt{\bar\alpha_t}$ is how much of the data survives, $\sqrt{1-\bar\alpha_t}$ how much noise there is;
# their squares always sum to one. `diffusion.q_sample` is this formula. Here is the spiral at a few $t$:

# %%
ts = [0, 10, 20, 50, 100, 200, 500, 1000]
gen = torch.Generator().manual_seed(2)
noise = torch.randn(x0.shape, generator=gen)
for name, s in schedules.items():
    panels, titles = [], []
    for t in ts:
        if t == 0:
            panels.append(x0)
            titles.append("t = 0 (data)")
            continue
        idx = torch.full((N,), t - 1, dtype=torch.long)  # paper's t -> 0-based index
        panels.append(diffusion.q_sample(x0, idx, s, noise))
        titles.append(f"t = {t}, " + r"$\sqrt{\bar\alpha_t}$" + f" = {s.sqrt_alpha_bar[t - 1]:.2f}")
    wrote(
        scatter_row(
            out / f"noising_{name}.png",
            panels,
            [f"{name}: {x}" if i == 0 else x for i, x in enumerate(titles)],
        )
    )

# %% [markdown]
# ## Check: iterating eq. 2 gives the same distribution as eq. 4
#
# The closed form is a claim about distributions, so we check it with statistics. Take one point $x_0$,
# copy it 20,000 times and run all copies through the chain of `q_step`s. At each $t$, the cloud's
# empirical mean and standard deviation should match $\sqrt{\bar\alpha_t}\, x_0$ and
# $\sqrt{1-\bar\alpha_t}$ (`diffusion.q_mean_variance`) up to Monte-Carlo error, about
# $\text{std}/\sqrt{20000} \approx 0.007$.

# %%
s = schedules["linear"]
point = x0[:1].double()
cloud = point.expand(20_000, 2)
chain = run_chain(cloud, s, {10, 50, 100, 300, 1000}, seed=3)
print(f"x_0 = ({point[0, 0]:.4f}, {point[0, 1]:.4f}), linear schedule, 20,000 chains")
print(
    f"{'t':>5} | {'empirical mean':>18} | {'closed-form mean':>18} | {'empirical std':>15} | closed-form std"
)
for t in [10, 50, 100, 300, 1000]:
    idx = torch.full((1,), t - 1, dtype=torch.long)
    mean, var = diffusion.q_mean_variance(point, idx, s)
    m, sd = chain[t].mean(0), chain[t].std(0)
    print(
        f"{t:5d} | ({m[0]:+.4f}, {m[1]:+.4f}) | ({mean[0, 0]:+.4f}, {mean[0, 1]:+.4f}) | "
        f"({sd[0]:.4f}, {sd[1]:.4f}) | {var[0, 0].sqrt():.4f}"
    )

# %% [markdown]
# The same check on the whole spiral: the energy distance between the chain's cloud and a cloud drawn
# with eq. 4 should be no bigger than between two independent eq.-4 clouds (the "floor").

# %%
chain = run_chain(x0, s, {50, 200, 1000}, seed=4)
for t in [50, 200, 1000]:
    idx = torch.full((N,), t - 1, dtype=torch.long)
    g = torch.Generator().manual_seed(5)
    jump_a = diffusion.q_sample(x0, idx, s, torch.randn(x0.shape, generator=g))
    jump_b = diffusion.q_sample(x0, idx, s, torch.randn(x0.shape, generator=g))
    print(
        f"t = {t:4d}: energy distance chain vs eq. 4 = {energy_distance(chain[t], jump_a):.5f}, "
        f"floor (eq. 4 vs eq. 4) = {energy_distance(jump_b, jump_a):.5f}"
    )

# %% [markdown]
# ## The NumPy reference, side by side
#
# `ddpm.reference_numpy` computes the same quantities from scratch in float64 NumPy, with explicit loops
# and no precomputed tables. Where both see the same noise, torch and NumPy must agree to rounding error.

# %%
x0_64 = x0.double()
g = torch.Generator().manual_seed(6)
eps = torch.randn(x0_64.shape, generator=g, dtype=torch.float64)
t_idx = torch.randint(0, T, (N,), generator=g)
for name, s in schedules.items():
    betas_np = ref.linear_betas(T) if name == "linear" else ref.cosine_betas(T)
    print(f"{name}:")
    print(f"  betas                max |torch - numpy| = {np.abs(s.betas.numpy() - betas_np).max():.2e}")
    torch_step = diffusion.q_step(x0_64, t_idx, s, eps).numpy()
    numpy_step = ref.forward_step(x0_64.numpy(), t_idx.numpy(), betas_np, eps.numpy())
    print(f"  q_step   (eq. 2)     max |torch - numpy| = {np.abs(torch_step - numpy_step).max():.2e}")
    torch_xt = diffusion.q_sample(x0_64, t_idx, s, eps).numpy()
    numpy_xt = ref.q_sample(x0_64.numpy(), t_idx.numpy(), betas_np, eps.numpy())
    print(f"  q_sample (eq. 4)     max |torch - numpy| = {np.abs(torch_xt - numpy_xt).max():.2e}")

# %% [markdown]
# ## Going backwards: the posterior $q(x_{t-1} \mid x_t, x_0)$ (eq. 6–7)
#
# To generate data we must run the chain in reverse. The reverse step $q(x_{t-1} \mid x_t)$ is intractable:
# it depends on the whole data distribution. But if we also know where the point started, Bayes' rule
# gives a Gaussian in closed form:
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal{N}\big(x_{t-1};\ \tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\big),$$
# $$\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\, x_0
#   + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\, x_t,
# \qquad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# The mean is a weighted average of "where we are" ($x_t$) and "where we came from" ($x_0$).
# `diffusion.q_posterior_mean_variance` computes it from the schedule's precomputed coefficients;
# `reference_numpy.posterior_mean_variance` recomputes it from the betas.

# %%
for name, s in schedules.items():
    betas_np = ref.linear_betas(T) if name == "linear" else ref.cosine_betas(T)
    x_t = diffusion.q_sample(x0_64, t_idx, s, eps)
    mean_t, var_t, _ = diffusion.q_posterior_mean_variance(x0_64, x_t, t_idx, s)
    mean_n, var_n = ref.posterior_mean_variance(x0_64.numpy(), x_t.numpy(), t_idx.numpy(), betas_np)
    print(
        f"{name}: posterior mean max |torch - numpy| = {np.abs(mean_t.numpy() - mean_n).max():.2e}, "
        f"variance max |torch - numpy| = {np.abs(var_t.expand_as(x_t).numpy() - var_n).max():.2e}"
    )

# %% [markdown]
# ## A reverse step (eq. 11 and Algorithm 2)
#
# The trained model will not know $x_0$. It predicts the noise $\varepsilon_\theta(x_t, t)$ instead, which
# gives an estimate $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}$
# (eq. 15); putting $\hat x_0$ into $\tilde\mu_t$ gives eq. 11,
#
# $$\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,
#   \varepsilon_\theta(x_t, t)\Big),
# \qquad x_{t-1} = \mu_\theta + \sigma_t z \quad (\text{Algorithm 2, line 4}),$$
#
# with $\sigma_t^2 = \tilde\beta_t$ here, and no noise added at the very last step. To test the step
# without a model we feed it an *oracle*: the true noise $\varepsilon$ that made $x_t$. Then
# $\hat x_0 = x_0$ exactly and the reverse step samples the true posterior. `diffusion.p_sample_step`
# (torch) and `reference_numpy.reverse_step` (NumPy, written in the eq.-11 form) must agree.

# %%
z = torch.randn(x0_64.shape, generator=g, dtype=torch.float64)
for name, s in schedules.items():
    betas_np = ref.linear_betas(T) if name == "linear" else ref.cosine_betas(T)
    x_t = diffusion.q_sample(x0_64, t_idx, s, eps)
    x_prev, x0_hat = diffusion.p_sample_step(eps, x_t, t_idx, s, z)
    x_prev_np = ref.reverse_step(eps.numpy(), x_t.numpy(), t_idx.numpy(), betas_np, z.numpy())
    post_mean, _, _ = diffusion.q_posterior_mean_variance(x0_64, x_t, t_idx, s)
    mu_theta, _, _, _ = diffusion.p_mean_variance(eps, x_t, t_idx, s)
    print(f"{name}: reverse step max |torch - numpy| = {np.abs(x_prev.numpy() - x_prev_np).max():.2e}")
    print(
        f"        oracle: max |x0_hat - x0| = {(x0_hat - x0_64).abs().max():.2e}, "
        f"max |mu_theta - mu_tilde| = {(mu_theta - post_mean).abs().max():.2e}"
    )

# %% [markdown]
# ## Walking back with the oracle
#
# Start from $x_T \sim q(x_T \mid x_0)$ and repeatedly draw $x_{t-1} \sim q(x_{t-1} \mid x_t, x_0)$.
# Every intermediate cloud again has the forward marginal $q(x_t \mid x_0)$, and the walk ends exactly on
# the data (at $t = 1$, $\tilde\mu_1 = x_0$ and $\tilde\beta_1 = 0$). This is what sampling would look like
# if the model were perfect; in notebook 1.3 a network learns to stand in for the unknown $x_0$.

# %%
s = schedules["linear"]
g = torch.Generator().manual_seed(7)
last = torch.full((N,), T - 1, dtype=torch.long)
x = diffusion.q_sample(x0, last, s, torch.randn(x0.shape, generator=g))
frames, titles, snapshots = [x.clone()], [f"oracle reverse: t = {T}"], {T: x.clone()}
for i in reversed(range(T)):
    t = torch.full((N,), i, dtype=torch.long)
    mean, var, _ = diffusion.q_posterior_mean_variance(x0, x, t, s)
    x = mean + var.sqrt() * torch.randn(x.shape, generator=g)
    if i in gif_steps:
        frames.append(x.clone())
        titles.append(f"oracle reverse: t = {i}")
    if i in (500, 200, 100, 50, 20, 0):
        snapshots[i] = x.clone()
print(f"after the walk: max |x - x0| = {(x - x0).abs().max():.2e}")
wrote(points_gif(out / "posterior_walk_linear.gif", frames, titles, duration_ms=60))
wrote(
    scatter_row(out / "posterior_walk_linear.png", list(snapshots.values()), [f"t = {t}" for t in snapshots])
)
