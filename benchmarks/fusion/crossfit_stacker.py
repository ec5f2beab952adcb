"""Refit the cross-fitted decision gate offline, from stored decisions, to see how stable the stacking is.

    python benchmarks/fusion/crossfit_stacker.py checkpoints/crossfit_gpu/crossfit_decisions.pt [--seeds 0 1 2] \
        [--mixing logp prob]

Input: `dump_decisions.py` output of cross-fitted runs (test decisions of the final model + out-of-fold
decisions). For each run, mixing rule and seed, a freshly initialised decision gate (the recipe's gate settings)
is fitted exactly as `cross_fit` does, on all out-of-fold rows, and scored on the test decisions; a second fit
on two thirds of the out-of-fold rows is scored on the last third (a selection score that never sees the test
split). The pipeline's own gate starts from the jointly trained gate instead, so its result is listed apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fusion.fusions.progressive import ProgressiveFusion  # noqa: E402
from fusion.tasks.cross_fit import fit_decision_gate  # noqa: E402


def subset(data: dict, rows: torch.Tensor) -> dict:
    return {"decisions": {k: v[rows] for k, v in data["decisions"].items()},
            "mask": {k: v[rows] for k, v in data["mask"].items()}, "label": data["label"][rows]}


def as_float(data: dict) -> dict:
    return {k: as_float(v) if isinstance(v, dict) else v.float() if v.is_floating_point() else v for k, v in data.items()}


def accuracy(fusion: ProgressiveFusion, data: dict) -> float:
    with torch.no_grad():
        logits, _ = fusion.combine_decisions(data["decisions"], data["mask"])
    return 100 * (logits.argmax(1) == data["label"]).float().mean().item()


def fitted_gate(modalities: list[str], classes: int, mixing: str, seed: int, data: dict) -> ProgressiveFusion:
    torch.manual_seed(seed)
    fusion = ProgressiveFusion({m: 8 for m in modalities}, classes, hidden_dim=8, decision_gate_inputs="confidence",
                               decision_mixing=mixing, gate={"hidden_dim": 64, "entropy_weight": 0.01})
    fit_decision_gate(fusion, data, epochs=40, lr=3e-3, label_smoothing=0.1, seed=seed)
    return fusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("decisions", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mixing", nargs="+", default=["logp", "prob"])
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args()
    runs = torch.load(args.decisions, weights_only=True)
    table = []
    for run, entry in runs.items():
        if "oof" not in entry:
            continue
        test, oof = as_float(entry["test"]), as_float(entry["oof"])
        modalities = [n for n in test["decisions"] if not n.startswith("~")]
        classes = test["decisions"][modalities[0]].shape[1]
        row = {"run": run, "pipeline": round(100 * (test["logits"].argmax(1) == test["label"]).float().mean().item(), 2)}
        for mixing in args.mixing:
            tests, holdouts = [], []
            for seed in args.seeds:
                order = torch.randperm(len(oof["label"]), generator=torch.Generator().manual_seed(seed))
                cut = 2 * len(order) // 3
                holdouts.append(accuracy(fitted_gate(modalities, classes, mixing, seed, subset(oof, order[:cut])),
                                         subset(oof, order[cut:])))
                tests.append(accuracy(fitted_gate(modalities, classes, mixing, seed, oof), test))
            row[mixing] = {"test": [round(t, 2) for t in tests], "oof_holdout_mean": round(statistics.mean(holdouts), 2)}
        table.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
