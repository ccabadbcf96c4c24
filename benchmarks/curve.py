"""The learning curve of a recipe: FLD against training images, from runs that differ only in their horizon,
and the training a power law puts at the ratio target (issue 6: showing that the limit is compute).

    python benchmarks/curve.py --keys uncond_h900 uncond_h1800 uncond --target 3
    python benchmarks/curve.py --recipe old=A1,A2,A3 --recipe new=B1,B2,B3 --target 3   # several, compared
    python benchmarks/curve.py --recipe new=B1,B2,B3 --held-out new=B4,B5    # runs the law did not see

``--keys K1 K2 K3`` is one recipe named after its last key; ``--recipe NAME=K1,K2,K3`` (repeatable) names
each. Every recipe is checked and fitted on its own:

1. Reads ``quality.<key>`` for each key from ``benchmarks/results.json`` (written by ``quality.py``) and
   refuses runs that differ in anything but the horizon: the config each was trained with (``config``;
   for entries written before quality.py kept it, the preset with its overrides as the preset is today),
   ``train.max_steps``, ``train.max_minutes``, ``train.fit_horizon`` and ``train.num_threads`` aside
   (threads change the speed, not the steps), and the sampler, its steps, the guidance and N.
2. Fits ``FLD − floor = a · images^(−b)`` by least squares on the logarithms. The floor (FLD of as many
   real training images) is what a perfect model would score at that N, so it is the excess over the
   floor that can shrink with training.
3. Solves for the images at ``FLD = target × floor`` and converts them to epochs and to hours at the
   training speed of the last key's run. ``benchmarks/results.json`` gets each fit under its name in
   ``learning_curves``, and the first recipe's as ``learning_curve`` (as before there were several);
   ``benchmarks/figures/learning_curve.png`` draws them all on the same axes.

Three points and two parameters: the residuals say how well a power law describes them; the
extrapolation is the law's, not a measurement. ``--held-out NAME=K1,…`` puts it to the test: runs of the
recipe that the fit did not see (at another horizon, and they may differ in ``seed`` and
``train.precision`` as well), drawn hollow beside the curve and kept under
the recipe's ``held_out`` with the FLD the law predicts at their images.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from record import RESULTS, merge_results, provenance

from ddpm import plotting
from ddpm.config import Config, apply_overrides
from ddpm.data.images import DATASETS
from ddpm.presets import get_preset

FIGURE = Path(__file__).resolve().parent / "figures" / "learning_curve.png"
HORIZON = tuple(("train", name) for name in ("max_steps", "max_minutes", "num_threads", "fit_horizon"))
HELD_OUT = (("train", "precision"), ("seed",))  # what a held-out run may differ in as well
SAME = ("preset", "sampler", "sampler_steps", "guidance")


def entry_config(entry: dict) -> Config:
    """The run's config as it was trained (``config``), or as its preset and overrides give it today for
    an entry written before quality.py kept the config."""
    if "config" in entry:
        return Config.from_dict(entry["config"])
    return apply_overrides(get_preset(entry["preset"]), entry["overrides"])


def recipe(entry: dict, aside: tuple[tuple[str, ...], ...] = HORIZON) -> dict:
    """The run's config without what only sets its horizon (or whatever ``aside`` names: key paths)."""
    cfg = entry_config(entry).to_dict()
    for *sections, name in aside:
        where = cfg
        for section in sections:
            where = where[section]
        where.pop(name)
    cfg["data"].pop("root")  # where the data lies, not what it is
    return cfg


def check_same_recipe(entries: dict[str, dict], aside: tuple[tuple[str, ...], ...] = HORIZON) -> None:
    """Refuse (SystemExit, one line) entries that are not one recipe at several horizons (the first entry
    is the recipe; ``aside``: the settings they may differ in)."""
    first_key, first = next(iter(entries.items()))
    for key, entry in entries.items():
        for field in SAME:
            if entry[field] != first[field]:
                raise SystemExit(
                    f"{key}: {field} {entry[field]!r} differs from {first_key}'s {first[field]!r}"
                )
        if entry["at_n"]["n"] != first["at_n"]["n"]:
            raise SystemExit(f"{key}: N {entry['at_n']['n']} differs from {first_key}'s {first['at_n']['n']}")
        if recipe(entry, aside) != recipe(first, aside):
            what = "the horizon" + (", the precision and the seed" if aside != HORIZON else "")
            raise SystemExit(f"{key}: its config differs from {first_key}'s in more than {what}")


def fit_power_law(images: np.ndarray, excess: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of ``excess = a · images^(−b)``, least squares on ``log excess`` against ``log images``."""
    slope, intercept = np.polyfit(np.log(images), np.log(excess), 1)
    return math.exp(intercept), -slope


def fit_recipe(
    keys: list[str], quality: dict, target: float, argv: list[str] | None, held_out: Sequence[str] = ()
) -> dict:
    """One recipe's learning curve from its ``quality.<key>`` entries: checked, fitted and extrapolated;
    the ``held_out`` entries (the same recipe, precision and seed aside) measured against the law."""
    entries = {k: quality[k] for k in keys}
    check_same_recipe(entries)
    check_same_recipe({keys[0]: entries[keys[0]], **{k: quality[k] for k in held_out}}, (*HORIZON, *HELD_OUT))
    images = np.array([e["images_seen"] for e in entries.values()], dtype=float)
    if len(set(images)) < 2:
        raise SystemExit(
            f"{', '.join(keys)}: the runs saw the same number of images; a curve needs different horizons"
        )
    fld = np.array([e["at_n"]["fld"] for e in entries.values()])
    floor = np.array([e["at_n"]["fld_train_test"] for e in entries.values()])
    a, b = fit_power_law(images, fld - floor)
    fitted = floor + a * images ** (-b)
    needed = (a / ((target - 1) * float(floor.mean()))) ** (1 / b)
    last = entries[keys[-1]]
    speed = last["images_seen"] / last["train_seconds"]
    epoch = DATASETS[entry_config(last).data.name].sizes["train"]
    points = [
        {
            "key": k,
            "steps": e["steps_trained"],
            "images": e["images_seen"],
            "fld": e["at_n"]["fld"],
            "floor": e["at_n"]["fld_train_test"],
            "fitted_fld": round(float(f), 3),
        }
        for (k, e), f in zip(entries.items(), fitted)
    ]
    tested = []
    for k in held_out:
        e = quality[k]
        predicted = e["at_n"]["fld_train_test"] + a * e["images_seen"] ** (-b)  # at its own floor
        tested.append(
            {
                "key": k,
                "images": e["images_seen"],
                "fld": e["at_n"]["fld"],
                "floor": e["at_n"]["fld_train_test"],
                "law_fld": round(float(predicted), 3),
                "fld_over_law": round(e["at_n"]["fld"] / float(predicted), 3),
            }
        )
    return {
        "law": "FLD - floor = a * images^(-b)",
        "a": a,
        "b": round(b, 4),
        "points": points,
        "held_out": tested,
        "target_ratio": target,
        "images_at_target": round(needed),
        "epochs_at_target": round(needed / epoch, 1),
        "hours_at_target": round(needed / speed / 3600, 2),
        "speed_images_per_s": round(speed, 1),
        "speed_from": keys[-1],
        **provenance("curve.py", argv),
    }


def parse_named(texts: list[str] | None, option: str) -> dict[str, list[str]]:
    """Name → keys from ``NAME=K1,K2,…`` arguments of ``option`` (each name once)."""
    found: dict[str, list[str]] = {}
    for text in texts or []:
        name, _, listed = text.partition("=")
        if not name or not listed:
            raise SystemExit(f"{option} {text!r}: write NAME=KEY1,KEY2,…")
        if name in found:
            raise SystemExit(f"{option} {text!r}: a recipe named {name!r} is given twice")
        found[name] = [k for k in listed.split(",") if k]
    return found


def parse_recipes(keys: list[str] | None, recipes: list[str] | None) -> dict[str, list[str]]:
    """Recipe name → its keys, from ``--keys`` (named after its last key) and ``--recipe NAME=K1,K2,…``."""
    found = {keys[-1]: keys} if keys else {}
    for name, listed in parse_named(recipes, "--recipe").items():
        if name in found:
            raise SystemExit(f"--recipe {name}={','.join(listed)}: a recipe named {name!r} is given twice")
        found[name] = listed
    if not found:
        raise SystemExit("give --keys K1 K2 … or --recipe NAME=K1,K2,… (repeatable)")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", nargs="+", help="quality.<key> entries of one recipe, at least two horizons")
    p.add_argument(
        "--recipe", action="append", metavar="NAME=K1,K2,…", help="a named recipe's keys (repeatable)"
    )
    p.add_argument(
        "--held-out",
        action="append",
        metavar="NAME=K1,…",
        help="runs of recipe NAME that the fit does not see, drawn against its law (repeatable)",
    )
    p.add_argument("--target", type=float, default=3.0, help="the FLD / floor ratio to extrapolate to")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--figure", type=Path, default=FIGURE)
    args = p.parse_args(argv)

    recipes = parse_recipes(args.keys, args.recipe)
    held_out = parse_named(args.held_out, "--held-out")
    quality = json.loads(args.results.read_text()).get("quality", {})
    for name in held_out:
        if name not in recipes:
            raise SystemExit(f"--held-out {name}=…: no recipe named {name!r} (give it with --recipe)")
    for keys in [*recipes.values(), *held_out.values()]:
        missing = [k for k in keys if k not in quality]
        if missing:
            raise SystemExit(
                f"no quality.{missing[0]} in {args.results}: run benchmarks/quality.py --key {missing[0]}"
            )
    for name, keys in recipes.items():
        if len(keys) < 2:
            raise SystemExit(f"{name}: a curve needs at least two runs")
    curves = {
        name: fit_recipe(keys, quality, args.target, argv, held_out.get(name, []))
        for name, keys in recipes.items()
    }
    first = next(iter(curves))
    merge_results({"learning_curve": curves[first], "learning_curves": curves}, args.results)

    drawn = [
        plotting.LearningCurve(
            name,
            [pt["images"] for pt in c["points"]],
            [pt["fld"] for pt in c["points"]],
            float(np.mean([pt["floor"] for pt in c["points"]])),
            (c["a"], c["b"]),
            c["images_at_target"],
            [pt["images"] for pt in c["held_out"]],
            [pt["fld"] for pt in c["held_out"]],
        )
        for name, c in curves.items()
    ]
    last = quality[recipes[first][-1]]
    budget = f"{recipes[first][-1]}: {last['train_seconds'] / 60:.0f} min at {last['threads']} threads"
    needed = ", ".join(f"{name} ~{c['images_at_target']:.2g}" for name, c in curves.items())
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    plotting.fld_vs_images(
        args.figure,
        drawn,
        args.target,
        budget=(last["images_seen"], budget),
        title=f"{last['preset']}, N = {last['at_n']['n']:,}: ratio {args.target:g} at {needed} images",
    )

    for name, c in curves.items():
        for pt in c["points"]:
            fit = f"FLD {pt['fld']:.2f} (fit {pt['fitted_fld']:.2f})"
            print(f"{name}: {pt['key']}: {pt['images']:,} images, {fit}")
        for pt in c["held_out"]:
            law = f"FLD {pt['fld']:.2f}, the law {pt['law_fld']:.2f} ({pt['fld_over_law']:.2f}×)"
            print(f"{name}: held out {pt['key']}: {pt['images']:,} images, {law}")
        print(
            f"{name}: b = {c['b']:.3f}; ratio {args.target:g} at {c['images_at_target']:,} images"
            f" = {c['epochs_at_target']} epochs = {c['hours_at_target']} h at {c['speed_images_per_s']} img/s"
        )
    print(f"figure {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
