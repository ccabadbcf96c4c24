"""Which sampler and spacing to use at each number of network evaluations (issue 20): the table behind
``ddpm.samplers.AUTO``, from the reports that ``ddpm sweep`` and ``ddpm eval`` leave in ``RUN/eval``.

    ddpm sweep RUN --n 1000 --full-n 1000 --steps 10,20 --spacings uniform,trailing      # every sampler
    ddpm eval RUN --n 1000 --sampler S --spacing P --steps 50                          # the best few at 50
    python benchmarks/sampler_table.py RUN --n 1000 --key sampler_sweep_uncond

1. Reads every report in ``RUN/eval`` of ``--n`` samples, sampling seed ``--seed``, no guidance, the run's
   own EMA and each sampler's default options: one row per (sampler, spacing, network evaluations), and
   the full-T DDPM row, whose spacing does not matter.
2. Prints FLD as a table (a line per sampler and spacing, a column per count) and, for each count, the
   best pair and its FLD over the full-T DDPM point's.
3. Draws each sampler at its best spacing (the one with the lowest FLD at the most common count) against
   network evaluations, with the full-T point and the floor (``--figure``), and merges the rows, the best
   pairs and the command into ``benchmarks/results.json`` under ``--key``.

``tests/test_sampler_table.py`` checks that ``ddpm.samplers.AUTO`` gives the recorded best pair at each
measured count: change the table, and that test says whether a measurement backs it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from record import merge_results, provenance

from ddpm import plotting
from ddpm.samplers import EVERY_STEP, SAMPLERS, SPACINGS

FULL = "all steps"
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "sampler_sweep_uncond.png"


def read_rows(run: Path, n: int, seed: int = 0) -> list[dict]:
    """One row per plain report in ``run/eval`` of ``n`` samples and sampling seed ``seed``; the full-T
    row's spacing is :data:`FULL`."""
    rows = []
    for path in sorted((run / "eval").glob("*.json")):
        report = json.loads(path.read_text())
        if "fld" not in report or "sampler" not in report:
            continue  # sweep.json, likelihood and editing reports
        plain = (report.get("guidance"), report.get("ema_sigma_rel"), report.get("options")) == (None,) * 3
        if report["n"] != n or report["seed"] != seed or not plain or report.get("eta"):
            continue
        rows.append(
            {k: report[k] for k in ("sampler", "spacing", "steps", "nfe", "n", "fld", "fld_train_test")}
        )
        rows[-1]["report"] = path.name
    T = json.loads((run / "config.json").read_text())["diffusion"]["T"]
    for r in rows:
        if r["steps"] == T:
            r["spacing"] = FULL  # every step: the spacing does not matter
    order, spacings = list(SAMPLERS), [*SPACINGS, FULL]

    def place(r):
        return r["spacing"] == FULL, order.index(r["sampler"]), spacings.index(r["spacing"]), r["nfe"]

    return sorted(rows, key=place)


def best_pairs(rows: list[dict]) -> dict[int, dict]:
    """For each measured ``--steps`` below the full-T one, its row with the lowest FLD. ``--steps K`` is the
    budget of network evaluations, as :data:`ddpm.samplers.AUTO` counts them (Heun's use K − 1 for even K)."""
    best = {}
    for r in rows:
        if r["spacing"] != FULL and (r["steps"] not in best or r["fld"] < best[r["steps"]]["fld"]):
            best[r["steps"]] = r
    return dict(sorted(best.items()))


def best_spacing_rows(rows: list[dict]) -> list[dict]:
    """Each sampler's rows at its best spacing (lowest FLD at the ``--steps`` measured most often), and the
    full-T row: the lines of the figure."""
    partial = [r for r in rows if r["spacing"] != FULL]
    common = Counter(r["steps"] for r in partial).most_common(1)[0][0]
    keep = []
    for sampler in dict.fromkeys(r["sampler"] for r in partial):
        at = [r for r in partial if r["sampler"] == sampler and r["steps"] == common]
        spacing = min(at, key=lambda r: r["fld"])["spacing"] if at else None
        keep += [r for r in partial if r["sampler"] == sampler and r["spacing"] == spacing]
    return keep + [r for r in rows if r["spacing"] == FULL]


def table(rows: list[dict]) -> str:
    """FLD, a line per sampler and spacing and a column per ``--steps`` (markdown)."""
    counts = sorted({r["steps"] for r in rows})
    lines = ["| sampler | spacing | " + " | ".join(str(c) for c in counts) + " |"]
    lines.append("|---|---|" + "---:|" * len(counts))
    for pair in dict.fromkeys((r["sampler"], r["spacing"]) for r in rows):
        fld = {r["steps"]: r["fld"] for r in rows if (r["sampler"], r["spacing"]) == pair}
        cells = [f"{fld[c]:.2f}" if c in fld else "" for c in counts]
        lines.append(f"| {pair[0]} | {pair[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder whose eval/ holds the reports")
    parser.add_argument("--n", type=int, default=1000, help="samples per point (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
    parser.add_argument("--key", help="merge into benchmarks/results.json under this key")
    parser.add_argument("--label", help="the model's name in the figure's title (default: the folder's)")
    parser.add_argument("--figure", type=Path, default=FIGURE, help=f"default {FIGURE.name} in docs/")
    args = parser.parse_args(argv)
    rows = read_rows(args.run, args.n, args.seed)
    if not rows:
        parser.error(f"no report of N = {args.n}, seed {args.seed} in {args.run / 'eval'}")
    full = [r for r in rows if r["spacing"] == FULL and r["sampler"] == EVERY_STEP[0]]  # not DDIM's row
    print(table(rows))
    best = best_pairs(rows)
    reference = full[0]["fld"] if full else None
    for steps, r in best.items():
        over = f", {r['fld'] / reference:.3f}× the full-T DDPM point" if reference else ""
        print(f"best at --steps {steps}: {r['sampler']}, {r['spacing']}: FLD {r['fld']:.2f}{over}")
    title = f"{args.label or args.run.name}, N = {args.n}: FLD against network evaluations"
    title += "\n(each sampler at its best spacing)"
    plotting.fld_vs_nfe(args.figure, best_spacing_rows(rows), title=title)
    print(f"wrote {args.figure}")
    if args.key:
        record = {
            "run": str(args.run),
            "n": args.n,
            "seed": args.seed,
            "floor": rows[0]["fld_train_test"],
            "full_t_fld": reference,
            "rows": rows,
            "best": {str(k): [r["sampler"], r["spacing"], r["fld"]] for k, r in best.items()},
            "provenance": provenance("sampler_table.py", argv),
        }
        merge_results({args.key: record})
        print(f"merged {args.key} into benchmarks/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
