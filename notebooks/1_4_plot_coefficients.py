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
# # 1.4 The noise schedule and every coefficient it implies
#
# Everything in a DDPM — the forward process, the posterior, the reverse step, the loss — is driven by
# one sequence of numbers, the variance schedule $\beta_1, \dots, \beta_T$. `ddpm.schedules.make_schedule`
# computes it once, in float64, together with every coefficient derived from it. This notebook plots
# them for the two schedules we use, at $T = 1000$:
#
# * **linear** (Ho et al. 2020, sec. 4): $\beta_t$ rises linearly from $\beta_1 = 10^{-4}$ to
#   $\beta_T = 0.02$;
# * **cosine** (Nichol & Dhariwal 2021, eq. 17): $\bar\alpha_t = f(t)/f(0)$ with
#   $f(t) = \cos^2\!\big(\tfrac{t/T + s}{1 + s}\cdot\tfrac{\pi}{2}\big)$, $s = 0.008$, and
#   $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$ clipped at 0.999.
#
# On the x-axis is the paper's step $t = 1, \dots, T$ (the library's arrays are 0-based: index $t - 1$).

# %%
import matplotlib.pyplot as plt
import numpy as np
from _common import parse_args, wrote

from ddpm.schedules import make_schedule

args = parse_args("1_4_plot_coefficients", "Coefficient plots of the linear and cosine schedules.")
out = args.out
T = 1000
schedules = {"linear": make_schedule("linear", T), "cosine": make_schedule("cosine", T)}
t = np.arange(1, T + 1)

# %% [markdown]
# ## The coefficients
#
# * $\beta_t$ — `betas`: the variance of one forward step (eq. 2).
# * $\bar\alpha_t = \prod_{s \le t}(1-\beta_s)$ — `alpha_bar`: the closed form of $q(x_t \mid x_0)$ (eq. 4).
# * $\sqrt{\bar\alpha_t}$ — `sqrt_alpha_bar`: how much of $x_0$ is left in $x_t$ (eq. 4).
# * $\sqrt{1-\bar\alpha_t}$ — `sqrt_one_minus_alpha_bar`: how much noise is in $x_t$ (eq. 4).
# * $\sqrt{\bar\alpha_{t-1}}\,\beta_t / (1-\bar\alpha_t)$ — `posterior_mean_coef1`: the weight of $x_0$ in
#   the posterior mean $\tilde\mu_t$ (eq. 7).
# * $\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1}) / (1-\bar\alpha_t)$ — `posterior_mean_coef2`: the weight of $x_t$
#   in $\tilde\mu_t$ (eq. 7).
# * $\tilde\beta_t = \beta_t\,(1-\bar\alpha_{t-1}) / (1-\bar\alpha_t)$ — `posterior_variance`: the variance of
#   the posterior (eq. 7), and the "small" choice of the reverse variance $\sigma_t^2$ (sec. 3.2).
# * $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$ — `snr`: the signal-to-noise ratio of $x_t$
#   (Kingma et al. 2021).

# %%
PANELS = [
    ("betas", r"$\beta_t$", "log"),
    ("alpha_bar", r"$\bar\alpha_t$", "linear"),
    ("sqrt_alpha_bar", r"$\sqrt{\bar\alpha_t}$  (signal, eq. 4)", "linear"),
    ("sqrt_one_minus_alpha_bar", r"$\sqrt{1-\bar\alpha_t}$  (noise, eq. 4)", "linear"),
    ("posterior_mean_coef1", r"posterior mean coef. of $x_0$ (eq. 7)", "log"),
    ("posterior_mean_coef2", r"posterior mean coef. of $x_t$ (eq. 7)", "linear"),
    ("posterior_variance", r"$\tilde\beta_t$  (posterior variance, eq. 7)", "log"),
    ("snr", r"SNR$(t) = \bar\alpha_t / (1-\bar\alpha_t)$", "log"),
]
COLORS = {"linear": "#1f77b4", "cosine": "#d62728"}


def draw(ax, attr, title, yscale):
    for name, s in schedules.items():
        values = getattr(s, attr).numpy()
        keep = values > 0 if yscale == "log" else np.ones_like(values, dtype=bool)  # β̃_1 = 0 has no log
        ax.plot(t[keep], values[keep], label=name, color=COLORS[name], lw=1.5)
    ax.set(yscale=yscale, xlabel="t", xlim=(0, T + 1))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both" if yscale == "linear" else "major")
    ax.legend(fontsize=8)


fig, axes = plt.subplots(2, 4, figsize=(17, 7.5), dpi=100)
for ax, (attr, title, yscale) in zip(axes.flat, PANELS):
    draw(ax, attr, title, yscale)
fig.suptitle(f"Linear vs cosine schedule, T = {T}", fontsize=12)
fig.tight_layout()
fig.savefig(out / "coefficients.png")
plt.close(fig)
wrote(out / "coefficients.png")

# %% [markdown]
# ## Reading the plots
#
# **Both ends of the schedule are chosen on purpose.**
#
# * **$\beta_1$ is tiny.** The first step barely changes the data ($\sqrt{\bar\alpha_1} \approx 1$), so
#   $x_1$ is still almost exactly $x_0$ and the last reverse step, the decoder $p_\theta(x_0 \mid x_1)$
#   (eq. 12–13), only has to model very fine detail. Near $t = 1$ the posterior mean is almost entirely
#   $x_0$: `posterior_mean_coef1` starts at exactly 1 and `posterior_mean_coef2` at 0, because
#   $\bar\alpha_0 = 1$ and so $\tilde\beta_1 = 0$.
# * **$\beta_T$ is large enough that $\bar\alpha_T \approx 0$.** Then $x_T = \sqrt{\bar\alpha_T}\,x_0 +
#   \sqrt{1-\bar\alpha_T}\,\varepsilon$ is (almost) pure noise $\mathcal{N}(0, I)$, whatever $x_0$ was —
#   which is exactly the prior $p(x_T) = \mathcal{N}(0, I)$ that sampling starts from. The KL term $L_T$
#   of the bound (eq. 5) is then negligible, and has no parameters anyway.
#
# How close to zero do we get?

# %%
for name, s in schedules.items():
    print(
        f"{name:6s}: beta_1 = {s.betas[0]:.2e}, beta_T = {s.betas[-1]:.4f}, "
        f"alpha_bar_T = {s.alpha_bar[-1]:.2e}, sqrt(alpha_bar_T) = {s.sqrt_alpha_bar[-1]:.2e}, "
        f"SNR(T) = {s.snr[-1]:.2e}"
    )
    half = int(np.argmax(s.sqrt_alpha_bar.numpy() < 0.5)) + 1
    gone = int(np.argmax(s.sqrt_alpha_bar.numpy() < 0.05)) + 1
    print(f"        sqrt(alpha_bar_t) falls below 0.5 at t = {half} and below 0.05 at t = {gone}")

# %% [markdown]
# For the linear schedule $\sqrt{\bar\alpha_T} \approx 0.0064$: a spiral point at distance 1 from the
# origin still shifts the final Gaussian by 0.0064 — far below the noise level of 1, so we can safely
# start sampling from $\mathcal{N}(0, I)$. The cosine schedule ends lower still ($\sqrt{\bar\alpha_T}$ of
# order $10^{-5}$; its last $\beta$ is clipped at 0.999 to avoid dividing by $f(T) = 0$).
#
# **Why cosine?** Look at $\sqrt{\bar\alpha_t}$. With the linear schedule the signal is below 5% by
# $t \approx 770$: the last quarter of the steps all look like pure noise, and training on them teaches
# the model little (Nichol & Dhariwal found that skipping up to the last 20% of the linear schedule's
# reverse steps barely hurts sample quality). The cosine schedule was designed (Nichol & Dhariwal 2021,
# sec. 3.2) so that $\bar\alpha_t$ falls roughly linearly in the middle and changes very little near both
# ends. It destroys information more slowly at the start — compare the two rows of `noising_*.png` from
# notebook 1.2 — so more steps are spent where the data still has structure. This matters most for small
# images and low-dimensional data like the spiral, where the linear schedule reaches noise too fast.
# The SNR panel shows the same thing on a log scale: the cosine curve's log-SNR falls almost linearly for
# most of $t$.

# %% [markdown]
# ## Other numbers of steps: the 1000/T rescaling
#
# Ho et al.'s numbers were tuned for $T = 1000$. With fewer steps, each step must add more noise to reach
# the same end point, so the library scales both ends of the linear schedule by $1000/T$ (as Nichol &
# Dhariwal's code does): $\beta_1 = 10^{-4}\cdot\tfrac{1000}{T}$, $\beta_T = 0.02\cdot\tfrac{1000}{T}$.
# Since
# $\log\bar\alpha_T = \sum_t \log(1-\beta_t) \approx -\sum_t \beta_t \approx -T(\beta_1+\beta_T)/2$
# and the rescaling keeps $T(\beta_1+\beta_T)$ fixed, $\bar\alpha_T$ stays about the same for every $T$
# (for very small $T$, where $\beta_T$ is no longer small, $\log(1-\beta) < -\beta$ and $\bar\alpha_T$ ends
# somewhat lower). The
# dashed curve shows what happens *without* the rescaling at $T = 100$: $\bar\alpha_T \approx 0.36$, so
# $x_T$ would still be 60% signal and sampling from $\mathcal{N}(0, I)$ would start from the wrong place.
# The cosine schedule is defined in terms of $t/T$, so it needs no rescaling at all. (The spiral preset of
# notebook 1.3 uses the cosine schedule with $T = 200$.)

# %%
Ts = [50, 100, 200, 1000, 4000]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
for ax, name in zip(axes, ["linear", "cosine"]):
    print(f"{name}:")
    for n_steps in Ts:
        s = make_schedule(name, n_steps)
        frac = np.arange(1, n_steps + 1) / n_steps
        ax.plot(frac, s.alpha_bar.numpy(), label=f"T = {n_steps}", lw=1.3)
        print(
            f"  T = {n_steps:4d}: beta_1 = {s.betas[0]:.2e}, beta_T = {s.betas[-1]:.4f}, "
            f"alpha_bar_T = {s.alpha_bar[-1]:.2e}, sqrt(alpha_bar_T) = {s.sqrt_alpha_bar[-1]:.2e}"
        )
    if name == "linear":
        # Undo the 1000/T rescaling: ask for ends that the rescaling maps back to 1e-4 and 0.02.
        raw = make_schedule("linear", 100, beta_start=1e-4 * 100 / 1000, beta_end=0.02 * 100 / 1000)
        ax.plot(np.arange(1, 101) / 100, raw.alpha_bar.numpy(), "k--", lw=1.3, label="T = 100, no rescaling")
        print(f"  T =  100 without rescaling (beta 1e-4 ... 0.02): alpha_bar_T = {raw.alpha_bar[-1]:.3f}")
    ax.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=f"{name} schedule at several T")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "alpha_bar_vs_T.png")
plt.close(fig)
wrote(out / "alpha_bar_vs_T.png")
