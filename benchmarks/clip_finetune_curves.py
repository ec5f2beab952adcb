"""Compares validation curves of fusion runs fine-tuned from aligned towers and trained from scratch.

Reads ``<run>/logs/metrics.csv`` (written by train.py's CSVLogger) of two or more runs, prints a markdown
table of the per-epoch metric, the first epoch at which each run reaches a target (by default 98 % of the
best value any run reached) and the test metrics from ``metrics.json``; optionally saves a plot.

    python benchmarks/clip_finetune_curves.py --run scratch=checkpoints/progressive/scratch \
        --run aligned=checkpoints/progressive/from_clip --plot benchmarks/clip_finetune_curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def read_curve(run_dir: Path, metric: str) -> list[float]:
    """Per-epoch values of ``metric`` (in epoch order) from a run's CSV log."""
    log = run_dir / "logs" / "metrics.csv"
    if not log.is_file():
        raise FileNotFoundError(f"no CSV log at '{log}' (is '{run_dir}' a train.py run folder?)")
    by_epoch: dict[int, float] = {}
    with open(log, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(metric) not in (None, "") and row.get("epoch") not in (None, ""):
                by_epoch[int(float(row["epoch"]))] = float(row[metric])
    if not by_epoch:
        raise ValueError(f"'{log}' has no values of '{metric}'")
    return [by_epoch[e] for e in sorted(by_epoch)]


def first_epoch_reaching(curve: list[float], target: float) -> int | None:
    """1-based epoch at which the curve first reaches ``target`` (None if never)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="name=run_folder (repeatable)")
    parser.add_argument("--metric", default="val/acc")
    parser.add_argument("--target", type=float, default=None, help="default: 98%% of the best value seen")
    parser.add_argument("--plot", type=Path, default=None, help="save a PNG of the curves here")
    args = parser.parse_args()
    runs = {}
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run '{spec}': expected name=run_folder")
        runs[name] = Path(folder)
    curves = {name: read_curve(folder, args.metric) for name, folder in runs.items()}
    target = args.target if args.target is not None else 0.98 * max(max(c) for c in curves.values())
    epochs = max(len(c) for c in curves.values())
    print("| epoch | " + " | ".join(curves) + " |")
    print("|---" * (len(curves) + 1) + "|")
    for e in range(epochs):
        cells = [f"{c[e]:.4f}" if e < len(c) else "" for c in curves.values()]
        print(f"| {e + 1} | " + " | ".join(cells) + " |")
    print(f"\nfirst epoch with {args.metric} >= {target:.4f}:")
    for name, curve in curves.items():
        test = {}
        metrics_file = runs[name] / "metrics.json"
        if metrics_file.is_file():
            test = {
                k: round(v, 4) for k, v in json.loads(metrics_file.read_text()).items() if k in ("test/acc",)
            }
        print(f"  {name}: {first_epoch_reaching(curve, target)} (best {max(curve):.4f}; {test})")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, curve in curves.items():
            ax.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
        ax.axhline(target, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(args.metric)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
