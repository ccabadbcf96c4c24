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
# # 3.2 Classifier-free guidance on MNIST
#
# Preset `mnist-cond` is the UNet of notebook 2.3 with a class embedding added to its time embedding, and
# one more embedding row, index 10, meaning "no label". In training, 10 % of the labels are replaced by that
# index (label dropout), so one network learns both $\varepsilon(x_t, c)$ and $\varepsilon(x_t, \varnothing)$.
# At sampling time, classifier-free guidance (Ho & Salimans 2022, eq. 6) extrapolates away from the
# unconditional prediction:
#
# $$\tilde\varepsilon = (1 + w)\,\varepsilon(x_t, c) - w\,\varepsilon(x_t, \varnothing).$$
#
# $w = 0$ is the plain conditional model; larger $w$ makes each digit more typical of its class (higher
# precision: LeNet agrees with the label we asked for) at the cost of variety (FLD, which also measures
# spread, eventually rises). Both passes run as one doubled batch (`ddpm.samplers.classifier_free_guidance`).
#
# Flags: `--run RUN` uses a trained `mnist-cond` run (`ddpm train mnist-cond --out RUN`, 30 minutes or more
# on a CPU); without it the notebook trains one for `--minutes`. `--n` samples per guidance weight for the
# measurements (default 500), `--sampler` and `--sample-steps` (default DPM-Solver++(2M), 20 steps).

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from _common import mnist_setup, open_run, train_run, wrote

WEIGHTS = (0.0, 1.0, 2.0, 3.0, 5.0)


def flags(parser):
    parser.add_argument("--run", type=Path, help="a trained class-conditional MNIST run (default: train one)")
    parser.add_argument("--n", type=int, default=500, help="samples per guidance weight for FLD/precision")
    parser.add_argument("--sampler", default="dpmpp2m", help="ddpm, ddim, dpmpp2m or dpmpp2m-sde")
    parser.add_argument("--per-class", type=int, default=6, help="samples per digit in each grid")


args, out, cfg = mnist_setup("3_2_mnist_guidance", "Classifier-free guidance on MNIST.", "mnist-cond", flags)
if args.sample_steps == 100:  # mnist_flags' default suits ancestral sampling; DPM-Solver++ needs far fewer
    args.sample_steps = 20

from ddpm.evaluate import evaluate_run  # noqa: E402
from ddpm.plotting import labelled_grid  # noqa: E402
from ddpm.run import sample, sampling_config  # noqa: E402

# %% [markdown]
# ## The model

# %%
run_dir = args.run if args.run else train_run(cfg, out, args.restart)
run, device, _ = open_run(run_dir)
run.cfg = sampling_config(run.cfg, sampler=args.sampler, steps=args.sample_steps)

# %% [markdown]
# ## What guidance does to the digits
#
# The same noise for every weight: row $c$ asks for digit $c$. Watch the digits become bolder and more
# uniform as $w$ grows.

# %%
labels = torch.arange(10).repeat_interleave(args.per_class)
for w in WEIGHTS:
    x = sample(run.cfg, run.model, run.schedule, len(labels), seed=0, label=labels, guidance=w).cpu()
    wrote(
        labelled_grid(
            out / f"guidance_w{w:g}.png",
            x.clamp(-1, 1),
            args.per_class,
            row_labels=[str(d) for d in range(10)],
            title=f"w = {w:g}",
        )
    )

# %% [markdown]
# ## Precision and FLD against the guidance weight
#
# For each weight, `--n` samples requested class by class, measured as `ddpm eval` does: precision (LeNet
# agrees with the requested digit), the mean of the per-class recalls, and FLD with its floor at the same N.

# %%
rows = []
for w in WEIGHTS:
    report = evaluate_run(
        run_dir, n=args.n, sampler=args.sampler, steps=args.sample_steps, guidance=w, seed=1, progress=False
    )
    recall = [r for r in report["recall"] if r is not None]
    rows.append((w, report["fld"], report["fld_train_test"], report["precision"], sum(recall) / len(recall)))
    print(f"w = {w:g}: FLD {rows[-1][1]:.2f} (floor {rows[-1][2]:.2f}), precision {rows[-1][3]:.3f}")

fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", color="tab:blue", label="FLD")
ax.axhline(rows[0][2], color="tab:blue", ls="--", lw=0.8, label=f"FLD floor (N = {args.n})")
ax.set_xlabel("guidance weight w")
ax.set_ylabel("FLD against the test set", color="tab:blue")
twin = ax.twinx()
twin.plot([r[0] for r in rows], [r[3] for r in rows], "s-", color="tab:red", label="precision")
twin.plot([r[0] for r in rows], [r[4] for r in rows], "^:", color="tab:orange", label="mean recall")
twin.set_ylabel("LeNet agreement with the label", color="tab:red")
twin.set_ylim(0, 1.02)
fig.legend(loc="lower right", fontsize=8)
ax.set_title(f"{args.sampler}, {args.sample_steps} steps, N = {args.n} per weight")
fig.tight_layout()
fig.savefig(out / "guidance_metrics.png")
plt.close(fig)
wrote(out / "guidance_metrics.png")
