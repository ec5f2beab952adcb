"""How far a few seeds can see: the seed-to-seed spread of the audio-only model and what it does to the gate's
promise checks ("a fused model with one modality removed is at most `line` points under that modality's own model",
one check per fusion kind and split).

    python benchmarks/robustness/seed_power.py benchmarks/robustness/results/cpu_defaults.json \
        benchmarks/robustness/results/h200_own_inputs.json --seeds 2 --kinds 3 --splits 4

Reads every `audio_only` run in the given result files (rows with a split and a test accuracy), pools the
standard deviation over (file, split) groups, then simulates sweeps: per split one audio-only mean and one mean
per fusion kind, each of `seeds` runs, the fused ones `--better` points better on average.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusion.eval.seed_spread import pass_probability, pooled_sd


def audio_only_groups(path: Path) -> dict[str, list[float]]:
    """'<file>:<split>' -> test accuracies % of the audio-only runs in a result file (any nesting)."""
    groups: dict[str, list[float]] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            label = node.get("label") or (f"{node['split']}/{node['row']}" if "split" in node and "row" in node else "")
            accuracy = node.get("test/acc", node.get("test_acc"))
            if label.endswith("/audio_only") and accuracy is not None:
                groups.setdefault(f"{path.name}:{label.split('/')[0]}", []).append(100 * accuracy if accuracy <= 1 else accuracy)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(path.read_text()))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--kinds", type=int, default=3)
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--line", type=float, default=1.0)
    parser.add_argument("--better", type=float, nargs="+", default=[0.0, 4.0])
    parser.add_argument("--sweeps", type=int, default=200_000)
    args = parser.parse_args()
    groups = {k: v for path in args.results for k, v in audio_only_groups(path).items()}
    sd, df = pooled_sd(list(groups.values()))
    if sd is None:
        raise SystemExit("no audio-only run with two or more seeds in the given files")
    print(f"audio-only runs: {sum(map(len, groups.values()))} in {len(groups)} groups; seed-to-seed sd {sd:.2f} points ({df} df)")
    print(f"one split's gap at {args.seeds} seeds per row: standard error {sd * (2 / args.seeds) ** 0.5:.2f}")
    print(f"seeds per row for a standard error of 0.5: one split {2 * (sd / 0.5) ** 2:.0f}, "
          f"mean of {args.splits} splits {2 * (sd / 0.5) ** 2 / args.splits:.0f}")
    one = pass_probability(sd, args.seeds, 1, 1, args.line, 0.0, args.sweeps)
    print(f"one check missed by an equally good model: {1 - one:.3f}")
    for better in args.better:
        p = pass_probability(sd, args.seeds, args.kinds, args.splits, args.line, better, args.sweeps)
        print(f"all {args.kinds * args.splits} checks passed, fused {better:+.1f} points: {p:.3f}")


if __name__ == "__main__":
    main()
