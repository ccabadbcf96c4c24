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
# # 4.1 What else a trained model can do: inpainting, editing, inversion, interpolation
#
# A trained denoiser knows $\mathbb{E}[x_0 \mid x_t]$ at every noise level. Sampling is one use of it; this
# notebook shows four more, none of which needs any retraining (`ddpm.editing`, and the commands
# `ddpm inpaint`, `edit`, `invert`, `interpolate`):
#
# 1. **Inpainting with RePaint** (Lugmayr et al. 2022). Keep some pixels, fill the rest. At every reverse
#    step the known pixels are replaced by the input noised to that step, $q(x_t \mid x_0)$, and the unknown
#    ones come from the model. Replacement alone leaves the two parts disagreeing (the model never sees
#    what the known part implies until the last, least noisy steps), so RePaint **resamples**: it jumps
#    back up a few steps by the forward process and walks down again, several times.
# 2. **SDEdit** (Meng et al. 2022). Noise an image to step $t_0 = s \cdot T$ and denoise it with any sampler.
#    The noise erases detail below a scale set by the strength $s$ and the model redraws it: a crude
#    sketch becomes a digit, at the price of some faithfulness.
# 3. **DDIM inversion** (Song et al. 2021, sec. 4.3). The deterministic DDIM sampler is a discretised ODE,
#    so it can be run backwards: from an image to the noise $x_T$ that DDIM would turn into it.
# 4. **Interpolation** between two images through their inverted noises, or between two noises, along a
#    great circle (`slerp`): Gaussian noise in 784 dimensions lies near a sphere of radius
#    $\sqrt{784} = 28$, and the straight line between two draws passes well inside it.
#
# The model: `MODEL` below (a trained MNIST run folder; `--run RUN` overrides it). When that folder does
# not exist, or with `--train`, the notebook trains the series' time-conditioned UNet for `--minutes`.
# `--sample-steps` reverse steps (default 50), `--n` test digits.

# %%

import numpy as np
import torch
import torch.nn.functional as F
from _common import ROOT, mnist_setup, open_run, pretrained_flags, trained_run, wrote

# The model source: a trained run folder. It will point at the pretrained run once that exists.
MODEL = ROOT / "pretrained" / "mnist-unet"


def flags(parser):
    pretrained_flags(parser, MODEL)
    parser.add_argument("--n", type=int, default=6, help="test digits to edit (at least 2)")
    parser.add_argument("--resample", type=int, default=10, help="RePaint: walks down each stretch")
    parser.add_argument("--jump-length", type=int, default=10, help="RePaint: levels jumped back")


args, out, cfg = mnist_setup(
    "4_1_editing", "Inpainting, SDEdit, inversion, interpolation.", "mnist-time", flags
)
if args.sample_steps == 100:  # mnist_flags' default; 50 steps suffice for these pictures
    args.sample_steps = 50

from ddpm import edit  # noqa: E402
from ddpm.editing import slerp_path  # noqa: E402
from ddpm.plotting import labelled_grid  # noqa: E402
from ddpm.run import sampling_config  # noqa: E402

# %% [markdown]
# ## The model

# %%
run, device, test = open_run(trained_run(args, cfg, out, MODEL))
run.cfg = sampling_config(run.cfg, steps=args.sample_steps)
digits = test[: args.n].to(device)
model, schedule = run.model, run.schedule

# %% [markdown]
# ## 1. Inpainting: the lower half of each digit, filled in
#
# White rows of the mask are kept. Columns: the digit, what the model is given, plain replacement (one
# walk down, no resampling), and two RePaint completions. A completion need not be the original digit:
# the upper half of a 7 may also be the top of a 9.

# %%
keep = torch.ones(1, 1, 28, 28, dtype=torch.bool)
keep[..., 14:, :] = False
rows = []
for i, digit in enumerate(digits):
    plain = edit.inpaint(run.cfg, model, schedule, digit[None], keep, n=1, seed=i, jump_n_sample=1)
    repainted = edit.inpaint(
        run.cfg, model, schedule, digit[None], keep, n=2, seed=i,
        jump_length=args.jump_length, jump_n_sample=args.resample,
    )  # fmt: skip
    given = torch.where(keep[0].to(device), digit, torch.zeros_like(digit))
    rows.append(torch.cat([digit[None], given[None], plain, repainted]))
wrote(
    labelled_grid(
        out / "inpainting.png",
        torch.cat(rows).cpu(),
        5,
        col_labels=["digit", "given", "replace", "RePaint", "RePaint"],
        title=f"lower half filled: {args.sample_steps} steps, jumps of {args.jump_length}, {args.resample}×",
    )
)

# %% [markdown]
# ## 2. SDEdit: from a sketch to a digit
#
# The second row of each pair is a crude "sketch" of the digit (averaged over 4×4 blocks). At strength
# 0 the output is the input; as it grows, more of the input is forgotten and redrawn. Somewhere in
# between the sketch turns into a clean digit that still follows its strokes.

# %%
strengths = [0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0]
k = min(3, len(digits))
sketches = F.interpolate(F.avg_pool2d(digits[:k], 4, ceil_mode=True), size=28, mode="nearest")
strip = []
for i, image in enumerate(torch.cat([digits[:k], sketches])):
    row = [edit.edit(run.cfg, model, schedule, image[None], s, seed=i) for s in strengths]
    strip.append(torch.cat(row))
order = [j for i in range(k) for j in (i, k + i)]  # each digit above its sketch
wrote(
    labelled_grid(
        out / "sdedit.png",
        torch.cat([strip[i] for i in order]).clamp(-1, 1).cpu(),
        len(strengths),
        row_labels=["digit", "sketch"] * k,
        col_labels=[f"s={s:g}" for s in strengths],
        title=f"SDEdit with {run.cfg.sample.sampler}, {args.sample_steps} steps for s = 1",
    )
)

# %% [markdown]
# ## 3. DDIM inversion and reconstruction
#
# Invert each digit to its noise $x_T$, then run DDIM from that noise. Reading $\hat\varepsilon$ at the
# point already reached rather than at the one sought (the usual inversion) makes each step slightly off;
# a few fixed-point iterations per step (`refine`) solve for the exact inverse where they converge.

# %%
noise = edit.invert(run.cfg, model, schedule, digits)
rebuilt = edit.decode(run.cfg, model, schedule, noise)
noise3 = edit.invert(run.cfg, model, schedule, digits, refine=3)
rebuilt3 = edit.decode(run.cfg, model, schedule, noise3)
for name, r in (("plain", rebuilt), ("refine 3", rebuilt3)):
    print(f"inversion ({name}): mean |reconstruction − digit| = {(r - digits).abs().mean().item():.4f}")
print(f"the inverted noises' norm: {noise.flatten(1).norm(dim=1).mean().item():.1f} (N(0, I): about 28)")
grid = torch.stack([digits, noise / 3, rebuilt, rebuilt3], 1).flatten(0, 1)
wrote(
    labelled_grid(
        out / "inversion.png",
        grid.clamp(-1, 1).cpu(),
        4,
        col_labels=["digit", "x_T / 3", "rebuilt", "refine 3"],
        title=f"DDIM inversion, {args.sample_steps} steps",
    )
)

# %% [markdown]
# ## 4. Interpolation
#
# First row: between two test digits, through their inverted noises. Second and third: between two random
# noises, along the great circle (slerp) and along the straight line. The line's middle has too small a
# norm for noise at $x_T$ (by $1/\sqrt 2$ for independent draws): its images come out faint or smooth.

# %%
frames = 8
pair = edit.invert(run.cfg, model, schedule, digits[:2], refine=3)
between_digits = edit.decode(run.cfg, model, schedule, slerp_path(pair[:1], pair[1:], frames))
z = torch.cat([edit.seed_noise(run.cfg, s) for s in (1, 2)]).to(device)
between_noises = edit.decode(run.cfg, model, schedule, slerp_path(z[:1], z[1:], frames))
alphas = torch.linspace(0, 1, frames, device=device).reshape(-1, 1, 1, 1)
straight = edit.decode(run.cfg, model, schedule, (1 - alphas) * z[:1] + alphas * z[1:])
wrote(
    labelled_grid(
        out / "interpolation.png",
        torch.cat([between_digits, between_noises, straight]).clamp(-1, 1).cpu(),
        frames,
        row_labels=["digits (slerp)", "noises (slerp)", "noises (line)"],
        col_labels=[f"{a:.2f}" for a in np.linspace(0, 1, frames)],
        title="interpolation, decoded by DDIM",
    )
)
