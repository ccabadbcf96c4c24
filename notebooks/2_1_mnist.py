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
# The steps notebooks 2.1–2.3 share (flags, training, the denoising and sampling figures) are in _common.py.
from _common import denoising_figure, mnist_setup, open_run, reverse_process_figures, train_run

args, out, cfg = mnist_setup(
    "2_1_mnist", "MNIST with the series' UNet without time conditioning.", "mnist-tiny"
)

# %% [markdown]
# ## Train
#
# `ddpm.training.train` is the engine of part 1: it loads MNIST's 60,000 training digits, trains with AdamW
# (warm-up, then cosine decay) and keeps an exponential moving average (EMA) of the weights, which is what
# we sample with. A few CPU minutes is a very short training — a GPU does thousands of steps in that time —
# so expect blurry digits; re-run the notebook to train longer.

# %%
run_dir = train_run(cfg, out, args.restart)

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
# blob, then commits to strokes, and the state follows it. After a few minutes of training the results are
# blobs and stroke fragments that only sometimes read as digits, and the missing time shows: many samples
# keep a grey, noisy background, and some never leave the noise at all — the network, unsure how much noise
# is left, removed too little of it. Notebook 2.2 trains the same network, told the time, and compares the
# two at every noise level.
