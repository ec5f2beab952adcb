"""Blank inputs as absent, side by side: one trained run's robustness curves with `blank_as_absent` off and on.

    python benchmarks/robustness/blank_inputs.py RUN [--out results/blank_inputs.json] [--kinds occlusion]

The option only changes inference on rows whose input is one constant value (full occlusion: a silent clip, an
image filled with one grey level), so the same weights are evaluated twice. Prints, per modality and corruption
kind, accuracy and the mean gate weight of the corrupted modality at each level, both ways.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fusion.eval.robustness import evaluate_robustness, gate_of
from fusion.eval.run_folder import load_run, load_test_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--kinds", nargs="+", default=["occlusion"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    run = load_run(args.run)
    batches, _ = load_test_batches(run, {})
    results = {}
    for blank_as_absent in (False, True):
        run.model.blank_as_absent = blank_as_absent
        results[f"blank_as_absent={blank_as_absent}"] = evaluate_robustness(
            run.model, batches, "cpu", run.data_spec["num_classes"], corruptions=args.kinds)
    for modality, curves in results["blank_as_absent=False"]["corruption"].items():
        for kind in curves:
            for name, result in results.items():
                other = result["corruption"][modality][kind]
                gate = other["gate"].get(gate_of(other, modality)) or []
                print(f"{modality:6s} {kind:10s} {name:22s} acc {[round(100 * a, 1) for a in other['acc']]} "
                      f"gate {[round(g, 3) for g in gate]}")
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
