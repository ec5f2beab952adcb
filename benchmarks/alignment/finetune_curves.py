"""Compares learning curves of fusion runs fine-tuned from aligned towers and trained from scratch.

Reads ``<run>/logs/metrics.csv`` (written by train.py's CSVLogger) of two or more runs and prints a
markdown table of a metric per epoch (or per logged step), the first point at which each run reaches a
target (by default 98 % of the best value any run reached; for ``--lower-is-better`` 102 % of the lowest)
and ``test/acc`` from ``metrics.json``; optionally saves a plot.

    python benchmarks/alignment/finetune_curves.py --run scratch=checkpoints/progressive/scratch \
        --run aligned=checkpoints/progressive/aligned --plot finetune_curves.png
    python benchmarks/alignment/finetune_curves.py ... --metric train/loss_step --axis step --lower-is-better
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def read_curve(run_dir: Path, metric: str, axis: str = "epoch") -> dict[int, float]:
    """``{x: value}`` of ``metric`` from a run's CSV log; x is the epoch (1-based) or the step."""
    log = run_dir / "logs" / "metrics.csv"
    if not log.is_file():
        raise FileNotFoundError(f"no CSV log at '{log}' (is '{run_dir}' a train.py run folder?)")
    curve: dict[int, float] = {}
    with open(log, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(metric) not in (None, "") and row.get(axis) not in (None, ""):
                x = int(float(row[axis])) + (1 if axis == "epoch" else 0)
                curve[x] = float(row[metric])
    if not curve:
        raise ValueError(f"'{log}' has no values of '{metric}'")
    return dict(sorted(curve.items()))


def first_reaching(curve: dict[int, float], target: float, lower_is_better: bool = False) -> int | None:
    """First x at which the curve reaches ``target`` (None if never)."""
    hits = (v <= target if lower_is_better else v >= target for v in curve.values())
    return next((x for x, hit in zip(curve, hits, strict=True) if hit), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="name=run_folder (repeatable)")
    parser.add_argument("--metric", default="val/acc")
    parser.add_argument("--axis", choices=["epoch", "step"], default="epoch")
    parser.add_argument("--lower-is-better", action="store_true", help="e.g. for a loss")
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="save a PNG of the curves here")
    args = parser.parse_args()
    runs = {}
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run '{spec}': expected name=run_folder")
        runs[name] = Path(folder)
    curves = {name: read_curve(folder, args.metric, args.axis) for name, folder in runs.items()}
    values = [v for c in curves.values() for v in c.values()]
    target = args.target
    if target is None:
        target = 1.02 * min(values) if args.lower_is_better else 0.98 * max(values)
    xs = sorted({x for c in curves.values() for x in c})
    print(f"| {args.axis} | " + " | ".join(curves) + " |")
    print("|---" * (len(curves) + 1) + "|")
    for x in xs:
        print(f"| {x} | " + " | ".join(f"{c[x]:.4f}" if x in c else "" for c in curves.values()) + " |")
    print(f"\nfirst {args.axis} with {args.metric} {'<=' if args.lower_is_better else '>='} {target:.4f}:")
    for name, curve in curves.items():
        metrics_file = runs[name] / "metrics.json"
        test = json.loads(metrics_file.read_text()).get("test/acc") if metrics_file.is_file() else None
        test_text = f"; test/acc {test:.4f}" if test is not None else ""
        print(f"  {name}: {first_reaching(curve, target, args.lower_is_better)}{test_text}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, curve in curves.items():
            ax.plot(list(curve), list(curve.values()), marker="o", markersize=3, label=name)
        ax.axhline(target, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(args.axis)
        ax.set_ylabel(args.metric)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
