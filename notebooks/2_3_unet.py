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
# # 2.3 The real UNet
#
# Notebooks 2.1 and 2.2 used the series' small UNet: a single convolution per level, 61k parameters. Ho et
# al. 2020 (appendix B) use a much bigger network, a PixelCNN++-style UNet, which Nichol & Dhariwal 2021
# refined. Preset `mnist-unet` builds it at MNIST size (`ddpm.models.unet.UNet`, about 1.1M parameters):
# 32 channels at 28×28, 64 at 14×14 and 64 at 7×7. Its parts:
#
# * **Residual blocks** (`ResBlock`) instead of single convolutions: GroupNorm → SiLU → 3×3 conv, then the
#   time is added, then GroupNorm → SiLU → dropout → 3×3 conv, and the block's input is added back
#   ($x + F(x)$; through a 1×1 conv where the channels change). The skip path lets gradients flow straight
#   through a deep stack, so the network can be deep and still train easily. The second convolution starts
#   at zero, so at first every block is the identity and the whole network outputs $\hat\varepsilon = 0$.
# * **GroupNorm** normalises each image's features over groups of channels. Unlike BatchNorm it does not
#   depend on the other images of the batch — which matters here, since a batch mixes images at every
#   noise level, and sampling may run one image at a time.
# * **SiLU** ($x\,\sigma(x)$, "swish"): a smooth ReLU; smooth activations suit a network whose output is a
#   smooth function of its input (the noise, as a function of $x_t$).
# * **Self-attention at 7×7** (`AttentionBlock`): at the lowest resolution every one of the 49 positions
#   can look at every other, so strokes far apart can agree on which digit this is. Convolutions only see
#   their neighbourhood. At 28×28 attention would compare 784 × 784 positions, 256 times more work, so it is
#   used only where the map is small (and always in the middle block).
# * **Sinusoidal time embedding → MLP**: as in 2.2, $t$ becomes a vector of sines and cosines
#   (Vaswani et al. 2017), which an MLP (Linear → SiLU → Linear) turns into a 128-dimensional embedding; each
#   residual block adds its own linear projection of it, one bias per channel, to its features.
# * **Down- and up-sampling**: a stride-2 convolution on the way down (28 → 14 → 7), nearest-neighbour
#   up-sampling and a convolution on the way up, and every encoder output concatenated into the decoder
#   (the skip connections of 2.1).
#
# The preset also switches to the **cosine schedule** (Nichol & Dhariwal 2021, eq. 17): notebook 1.4 plots
# all its coefficients; below we look at $\bar\alpha_t$ once more, on a digit.
#
# Flags as in 2.1: `--minutes M` (default 3; re-running resumes the run in `--out/run` and trains `M` more
# minutes, `--restart` starts over), `--steps N` (the step budget and end of the learning-rate decay),
# `--samples`, `--sample-steps`. This network is about 8 times slower per step than the small one: on a
# CPU, a few minutes is only on the order of a hundred steps, too few for digits. Give it `--minutes 30`
# and more threads (`--threads 2`), or a GPU, which `train` uses automatically when there is one.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import (
    denoising_figure,
    mnist_setup,
    open_run,
    paper_steps,
    reverse_process_figures,
    train_run,
    wrote,
)
from torch import nn

from ddpm.diffusion import q_sample
from ddpm.models import count_parameters
from ddpm.models.unet import AttentionBlock
from ddpm.plotting import grid_image
from ddpm.schedules import make_schedule

args, out, cfg = mnist_setup("2_3_unet", "MNIST with the real UNet and the cosine schedule.", "mnist-unet")

# %% [markdown]
# ## Train
#
# The same engine and recipe as in 2.1 and 2.2: AdamW with warm-up and cosine decay, batches of 64, an EMA
# of the weights for sampling.

# %%
run_dir = train_run(cfg, out, args.restart)

# %% [markdown]
# The losses of 2.2 and 2.3 cannot be compared number for number: the cosine schedule spends more of its
# steps at low noise, where predicting $\varepsilon$ is hardest, so the same network would show a higher
# average loss under it. The preset also weights each step's loss by Min-SNR-5 (Hang et al. 2023,
# `ddpm.diffusion.min_snr_weight`): $\min(\mathrm{SNR}_t, 5)/\mathrm{SNR}_t$ for ε-prediction, which
# lowers the weight of the nearly clean steps (in $x_0$ terms the plain ε-loss weights a step by its SNR).

# %% [markdown]
# ## The network, block by block
#
# One forward pass of a test digit, with a hook on every block: what it is, the shape of its output
# (channels, height, width) and its parameters.

# %%
run, device, test_set = open_run(run_dir)
test = test_set[:8].to(device)
net, trace = run.model, []


def record(name):
    return lambda module, inputs, output: trace.append((name, module, tuple(output.shape[1:])))


hooks = [net.conv_in.register_forward_hook(record("conv_in"))]
for part in ("down", "middle", "up"):
    for i, block in enumerate(getattr(net, part)):
        for layer in block if isinstance(block, nn.ModuleList) else [block]:
            hooks.append(layer.register_forward_hook(record(f"{part}[{i}]")))
hooks.append(net.out.register_forward_hook(record("out")))
with torch.no_grad():
    net(test[:1], torch.zeros(1, device=device))
for hook in hooks:
    hook.remove()
for name, module, shape in trace:
    print(f"{name:10s} {type(module).__name__:15s} {str(shape):15s} {count_parameters(module):9,d}")
parts = {"time embedding MLP": net.time_embed, "encoder": net.down, "middle": net.middle, "decoder": net.up}
attention = sum(count_parameters(m) for m in net.modules() if isinstance(m, AttentionBlock))
for name, module in parts.items():
    print(f"{name:20s} {count_parameters(module):9,d}")
print(f"{'of which attention':20s} {attention:9,d}")
print(f"{'total':20s} {count_parameters(net):9,d}")

# %% [markdown]
# The decoder holds most of the parameters: its blocks read the up-sampled features *and* the skip
# connection, so their first convolution has twice the input channels.
#
# ## Linear and cosine schedules on a digit
#
# The cosine schedule keeps more of the digit for longer: at $t = 400$ the linear schedule has left
# $\sqrt{\bar\alpha_t} \approx 0.44$ of the signal, the cosine one about 0.80. The linear schedule is
# practically pure noise for its last quarter of steps; the cosine schedule spreads the destruction evenly,
# so the network's training covers more useful noise levels.

# %%
T = run.schedule.T
noise_steps = paper_steps(T)  # paper steps 50 … 800 for T = 1000
schedules = {"linear": make_schedule("linear", T), "cosine": run.schedule.to("cpu")}
digit = test_set[:1].expand(len(noise_steps), -1, -1, -1)
eps = torch.randn(digit.shape, generator=torch.Generator().manual_seed(0))
steps = torch.tensor(noise_steps) - 1
fig, axes = plt.subplots(1, 2, figsize=(10, 3), dpi=100, gridspec_kw={"width_ratios": [1, 1.3]})
for name, s in schedules.items():
    axes[0].plot(range(1, T + 1), s.alpha_bar.numpy(), label=name)
axes[0].set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$ (notebook 1.4 has the rest)")
axes[0].grid(alpha=0.3)
axes[0].legend(fontsize=8)
strips = torch.cat([q_sample(digit, steps, s, eps) for s in schedules.values()])
axes[1].imshow(np.asarray(grid_image(strips, len(noise_steps))), cmap="gray")
axes[1].set_xticks([30 * (c + 0.5) + 1 for c in range(len(noise_steps))], [f"t={t}" for t in noise_steps])
axes[1].set_yticks([30 * (r + 0.5) + 1 for r in range(2)], list(schedules))
axes[1].tick_params(length=0)
axes[1].spines[:].set_visible(False)
fig.tight_layout()
fig.savefig(out / "schedules.png")
plt.close(fig)
wrote(out / "schedules.png")

# %% [markdown]
# ## Denoising test digits at several noise levels
#
# We take 8 digits the network has never seen, noise them with `q_sample` to the paper's step $t$ (array
# index $t - 1$), and read the network's output as a guess of the clean digit with `x0_eps_from_output`
# (eq. 15, clipped to the data range as the sampler does). Each pair of rows is the noisy input $x_t$ and
# the guess $\hat x_0$; the top row is the original.


# %%
denoising_figure(run, test, out)

# %% [markdown]
# Note the labels: under the cosine schedule the same $t$ is much less noisy than under the linear one of
# 2.1 and 2.2 ($\sqrt{\bar\alpha_{800}} \approx 0.31$ against 0.04), so compare the rows by their
# $\sqrt{\bar\alpha}$, not by $t$.

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
# ## What a few minutes buy
#
# On a 2-core CPU, 3 minutes are only about 110 steps of this network (1.6 s a step; the small UNet of 2.2
# does about 800 in that time). That is enough for the denoising figure to look reasonable at moderate noise,
# but not for sampling: the samples are still noise with faint strokes, because sampling chains 100 guesses,
# starting from pure noise, where the network has learned least. On a GPU (one H200, bf16) 2 minutes are
# about 2,800 steps, and then the samples are clearly recognisable digits of every class, while the small
# networks of 2.1 and 2.2 after 3,000 steps still draw grey noise (2.1) or squiggles (2.2). The extra
# capacity pays off, but only once it has been trained: per minute of CPU the small network is ahead.
