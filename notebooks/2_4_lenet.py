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
# # 2.4 A judge for generated digits: LeNet-5
#
# Notebooks 2.1–2.3 showed samples and let us judge them by eye. To compare models with a number we need a
# network that has seen many real digits: a classifier. Its *features* describe a digit in a few dozen
# numbers, and the **Fréchet LeNet Distance** (FLD) compares the distribution of those features over
# generated digits with their distribution over real ones, as the Fréchet Inception Distance of Heusel et
# al. (2017) does with an ImageNet network for photographs. Its *predictions* tell us which digit a sample
# looks like, so we can also check that a model draws all ten digits about equally often.
#
# The classifier is LeCun et al.'s LeNet-5 (1998), in its modern form (`ddpm.models.lenet.LeNet5`):
#
# * C1: 6 convolutions 5×5 (padded, so the 28×28 digit keeps its size) → ReLU → max-pool to 14×14;
# * C3: 16 convolutions 5×5 → 10×10 → ReLU → max-pool to 5×5;
# * C5, F6: fully connected layers of 120 and 84 units with ReLU; then 10 logits.
#
# That is 61,706 parameters, about as many as the series' small UNet. The 84 activations of F6 are the
# features the FLD uses. The input is the diffusion range $[-1, 1]$, so samples go in as the sampler returns
# them.
#
# Flags: `--epochs` and `--batch-size` (default: the library's), `--train-subset N` trains on the first `N`
# training images only (for a quick try), `--dataset fashion-mnist` trains on Fashion-MNIST instead.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import parse_args, wrote

from ddpm.data.images import dataset_info, load, to_tensor
from ddpm.metrics import lenet
from ddpm.models import count_parameters


def flags(parser):
    parser.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
    parser.add_argument("--epochs", type=int, default=lenet.EPOCHS, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=lenet.BATCH_SIZE, help="images per step")
    parser.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0: all)")


args = parse_args("2_4_lenet", "Train LeNet-5; its accuracy and its mistakes.", flags)
out = args.out
info = dataset_info(args.dataset)

# %% [markdown]
# ## Train
#
# `ddpm.metrics.lenet.train_lenet` is plain supervised learning: the cross-entropy of the logits, AdamW,
# and a *one-cycle* learning rate that rises for the first 30 % of the steps and then falls to almost zero
# (Smith & Topin 2019), which reaches a good accuracy in few epochs. No data augmentation: MNIST's 60,000
# digits are plenty for 62k parameters. On one CPU thread an epoch takes some 15 seconds.

# %%
x_train, y_train = load(info.name, "train")
x_test, y_test = load(info.name, "test")
if args.train_subset:
    x_train, y_train = x_train[: args.train_subset], y_train[: args.train_subset]
x_train, x_test = to_tensor(x_train), to_tensor(x_test)
y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
epochs = f"{args.epochs} epoch{'s' * (args.epochs != 1)}"
print(f"{info.name}: {len(x_train):,} training and {len(x_test):,} test images, {epochs}")

history = []
start = time.perf_counter()
model, accuracy = lenet.train_lenet(
    x_train, y_train, x_test, y_test, epochs=args.epochs, batch_size=args.batch_size, history=history
)
print(f"LeNet-5, {count_parameters(model):,} parameters: trained in {time.perf_counter() - start:.0f} s")
print(f"test accuracy {100 * accuracy:.2f} % ({round((1 - accuracy) * len(x_test))} mistakes)")

# %%
steps, losses, batch_acc = (np.array(column) for column in zip(*history))
window = max(1, len(steps) // 50)  # a running mean, so the curve is readable


def smooth(values):
    return np.convolve(values, np.ones(window) / window, mode="valid")


fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3), dpi=100)
ax_loss.plot(steps[window - 1 :], smooth(losses))
ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="training loss")
ax_acc.plot(steps[window - 1 :], 100 * smooth(batch_acc))
ax_acc.axhline(100 * accuracy, color="k", ls="--", lw=0.8, label=f"test: {100 * accuracy:.2f} %")
ax_acc.set(xlabel="step", ylabel="%", ylim=(max(0, 100 * batch_acc.min()), 100.5), title="batch accuracy")
ax_acc.legend(loc="lower right")
fig.tight_layout()
fig.savefig(out / "training.png")
plt.close(fig)
wrote(out / "training.png")

# %% [markdown]
# ## Its mistakes
#
# A classifier at 99 % still gets some hundred of the 10,000 test digits wrong. Each is shown with its true
# label and the network's guess.

# %%
predicted = lenet.lenet_predict(model, x_test)
wrong = np.flatnonzero(predicted != y_test.numpy())
shown = wrong[:40]
cols = 10
rows = max(1, -(-len(shown) // cols))
fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.3 * rows), dpi=100, squeeze=False)
for ax in axes.flat:
    ax.axis("off")
for ax, i in zip(axes.flat, shown):
    ax.imshow(x_test[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
    ax.set_title(f"{info.classes[y_test[i]]}→{info.classes[predicted[i]]}", fontsize=7)
if not len(shown):
    axes[0, 0].text(0, 0.5, "no mistakes", fontsize=10)
fig.suptitle(f"{len(wrong)} misclassified {info.name} test images (true→predicted), the first {len(shown)}")
fig.tight_layout()
fig.savefig(out / "misclassified.png")
plt.close(fig)
wrote(out / "misclassified.png")

# %% [markdown]
# Many of these would puzzle a person too: a 4 with an open top read as a 9, a 7 with a crossbar, digits cut
# off or written in an unusual hand. Such a network is a fair judge of whether a generated digit looks like a
# digit.
#
# ## Which classes it confuses
#
# The confusion matrix counts, for every true class (row), how often each class was predicted (column). The
# diagonal holds the right answers; everything else is a mistake.

# %%
confusion = np.zeros((10, 10), dtype=np.int64)
np.add.at(confusion, (y_test.numpy(), predicted), 1)
fig, ax = plt.subplots(figsize=(6, 5.2), dpi=100)
image = ax.imshow(np.log1p(confusion), cmap="Blues")
for t in range(10):
    for p in range(10):
        if confusion[t, p]:
            light = confusion[t, p] > np.expm1(0.6 * np.log1p(confusion.max()))
            ax.text(p, t, confusion[t, p], ha="center", va="center", fontsize=7, color="w" if light else "k")
ax.set_xticks(range(10), info.classes, rotation=90 if info.name != "mnist" else 0, fontsize=8)
ax.set_yticks(range(10), info.classes, fontsize=8)
ax.set(xlabel="predicted", ylabel="true", title=f"{info.name} test set: confusion matrix (log colour)")
fig.tight_layout()
fig.savefig(out / "confusion.png")
plt.close(fig)
wrote(out / "confusion.png")

off = confusion - np.diag(np.diag(confusion))
for k in np.argsort(off, axis=None)[::-1][:3]:
    t, p = divmod(int(k), 10)
    print(f"{info.classes[t]} read as {info.classes[p]}: {off[t, p]} times")

# %% [markdown]
# On MNIST the mistakes are spread thinly; the largest cells pair digits that share strokes (4 and 9, 7 and
# 2, 3 and 5). On Fashion-MNIST (`--dataset fashion-mnist`, about 90 %) the network mixes up the upper-body
# garments: shirts, T-shirts, pullovers and coats.
#
# The diffusion evaluation does not train its own classifier each time: `ddpm.metrics.lenet.load_lenet`
# trains one once per dataset with these defaults and keeps it in the data cache, under a name that
# includes a checksum of the training data, so that every FLD is measured with the same network.
