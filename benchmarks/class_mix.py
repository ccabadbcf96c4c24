"""How much FLD a class mix alone costs: real MNIST training digits drawn in the class proportions of a
``ddpm eval`` report (LeNet's reading of a model's samples), measured against the test set like samples,
beside real digits in the training set's own proportions (the floor) and in equal ones.

    python benchmarks/class_mix.py RUN/eval/REPORT.json [--n 10000] [--draws 3]

Prints the FLD of each draw; merges nothing (a diagnostic, quoted in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ddpm.data import images as image_data
from ddpm.evaluate import ReferenceSet
from ddpm.metrics.fld import fld
from ddpm.metrics.lenet import lenet_features


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="a ddpm eval report of an MNIST run (its class_histogram)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--draws", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    reference = ReferenceSet.load("mnist", progress=False)
    labels = np.asarray(image_data.load("mnist", "train")[1])
    rng = np.random.default_rng(0)

    def draw(proportions) -> float:
        counts = np.round(np.asarray(proportions) / np.sum(proportions) * args.n).astype(int)
        chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in enumerate(counts)]
        x = reference.train_x[np.concatenate(chosen)]
        return fld(lenet_features(reference.classifier.model, x, progress=False), reference.test_statistics)

    mixes = {
        "the report's class mix": json.loads(open(args.report).read())["class_histogram"],
        "the training set's (the floor)": np.bincount(labels, minlength=10),
        "equal shares": np.ones(10),
    }
    for name, mix in mixes.items():
        values = [draw(mix) for _ in range(args.draws)]
        shares = ", ".join(f"{p:.3f}" for p in np.asarray(mix) / np.sum(mix))
        print(
            f"{name} ({shares}): FLD "
            + ", ".join(f"{v:.3f}" for v in values)
            + f"; mean {np.mean(values):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
