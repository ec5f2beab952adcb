"""What a progressive run's decision gate makes of its decisions, against fixed combinations of the same decisions.

    python benchmarks/robustness/decisions.py RUN [RUN ...] [--temperatures 2 4] [--out results/decisions.json]

On the run's test split: the accuracy of the model's answer, of each decision the decision gate weighs (one per
modality, read before any feedback, and the fused one), of fixed sums of their log-probabilities (a product of
experts, the Bayes rule for independent, calibrated decisions), of the most confident decision, and the share of
rows that at least one decision gets right (a bound for any per-row choice among them). Also each decision's mean
top probability (against its accuracy: over- or under-confident), the gate's mean weights, and the gate's own
weights applied with the fused decision softened by each temperature T (log_softmax(fused / T); T = 1 is the
model's answer wherever every modality is present).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from fusion.eval.run_folder import load_run, load_test_batches

FIXED = {"audio + image": {"audio": 1.0, "image": 1.0}, "image + fused": {"image": 1.0, "~fused": 1.0},
         "audio + image + fused": {"audio": 1.0, "image": 1.0, "~fused": 1.0},
         "audio / 2 + image": {"audio": 0.5, "image": 1.0}}


def decisions_of(path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probabilities of each decision (N, K) by name, the model's logits (N, K), labels (N,), and the decision
    gate's weights (N,) by decision name."""
    run = load_run(path)
    with tempfile.TemporaryDirectory() as scratch:
        batches, _ = load_test_batches(run, {}, Path(scratch))
    parts: dict[str, list[torch.Tensor]] = {}
    logits, labels, weights = [], [], {}
    with torch.no_grad():
        for batch in batches:
            result = run.model.forward_with_details(batch)
            if not result.decision_logits:
                raise SystemExit(f"{path}: {run.kind} fusion has no decision gate (progressive fusion has one)")
            for name, value in result.decision_logits.items():
                parts.setdefault(name, []).append(torch.log_softmax(value.float(), dim=1))
            logits.append(result.logits.float())
            labels.append(batch["label"])
            for name, value in result.gate_weights.items():
                if name.startswith("decision/"):
                    weights.setdefault(name, []).append(value.float())
    gate = {name.removeprefix("decision/").replace("fused", "~fused"): torch.cat(v) for name, v in weights.items()}
    return {k: torch.cat(v) for k, v in parts.items()}, torch.cat(logits), torch.cat(labels), gate


def report(path: Path, temperatures: tuple[float, ...] = (2.0, 4.0)) -> dict:
    decisions, logits, labels, gate = decisions_of(path)

    def accuracy(scores: torch.Tensor) -> float:
        return round(100 * (scores.argmax(1) == labels).float().mean().item(), 2)

    means = {f"decision/{name.lstrip('~')}": round(w.mean().item(), 4) for name, w in gate.items()}
    out = {"run": str(path), "rows": len(labels), "model": accuracy(logits), "gate": means,
           "decisions": {name: {"acc": accuracy(logp), "mean_top_prob": round(logp.exp().max(1).values.mean().item(), 3)}
                         for name, logp in decisions.items()}}
    out["fixed"] = {name: accuracy(sum(w * decisions[d] for d, w in weights.items()))
                    for name, weights in FIXED.items() if all(d in decisions for d in weights)}
    stacked = torch.stack(list(decisions.values()), dim=1)  # (N, D, K)
    confident = stacked.max(dim=2).values.argmax(dim=1)  # (N,)
    out["most_confident"] = accuracy(stacked[torch.arange(len(labels)), confident])
    right = (stacked.argmax(dim=2) == labels[:, None]).any(dim=1)  # (N,)
    out["any_right"] = round(100 * right.float().mean().item(), 2)
    out["gate_fused_tempered"] = {}
    for t in (1.0, *temperatures):
        softened = {**decisions, "~fused": torch.log_softmax(decisions["~fused"] / t, dim=1)}
        out["gate_fused_tempered"][str(t)] = accuracy(sum(gate[d][:, None] * softened[d] for d in gate))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = [report(path, tuple(args.temperatures)) for path in args.runs]
    for r in results:
        decisions = ", ".join(f"{k} {v['acc']} (top p {v['mean_top_prob']})" for k, v in r["decisions"].items())
        fixed = ", ".join(f"{k} {v}" for k, v in r["fixed"].items())
        print(f"{r['run']}: model {r['model']} | {decisions} | {fixed} | most confident {r['most_confident']} | "
              f"any right {r['any_right']} | gate {r['gate']} | gate, fused / T {r['gate_fused_tempered']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
