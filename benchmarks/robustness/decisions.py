"""What a late or progressive run's decision gate makes of its decisions, against fixed combinations of the same decisions.

    python benchmarks/robustness/decisions.py RUN [RUN ...] [--temperatures 2 4] [--corrupt audio impulse 0.5]
        [--out results/decisions.json]

On the run's test split: the accuracy of the model's answer (every row) and of each decision the decision gate
weighs (one per modality, read before any feedback, over the rows where that modality is present; and
progressive fusion's fused one), with its mean top probability (against its accuracy: over- or under-confident) and the share of those rows given
its most frequent class (1.0: one answer for every row). `--corrupt MODALITY KIND LEVEL` first corrupts that
modality of every test batch (fusion/data/corruption.py, generator seeded 0). On the rows with every
modality present (`complete_rows`): the model's answer again, fixed sums of the decisions' log-probabilities (a
product of experts, the Bayes rule for independent, calibrated decisions), the most confident decision, the share
of rows that at least one decision gets right (a bound for any per-row choice among them), the gate's own weights
applied as a mixture (log of the weighted sum of probabilities, `gate_mixture`) and, for progressive fusion, with
the fused decision softened by each temperature T (log_softmax(fused / T); T = 1 is the model's answer). Also the
gate's mean weights, and per decision the rows it gets right while the model's answer is wrong (`overruled`), with
the gate's mean weight of each decision on those rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fusion.data.corruption import corrupt
from fusion.eval.run_folder import load_run, load_test_batches
from fusion.fusions.progressive import FUSED

FIXED = {"audio + image": {"audio": 1.0, "image": 1.0}, "image + fused": {"image": 1.0, FUSED: 1.0},
         "audio + image + fused": {"audio": 1.0, "image": 1.0, FUSED: 1.0},
         "audio / 2 + image": {"audio": 0.5, "image": 1.0}}


def decisions_of(path: Path, corruption: tuple[str, str, float] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """By decision name: log-probabilities (N, K) and the rows where its modality was present (N,) bool; the model's
    logits (N, K), labels (N,), and the decision gate's weights (N,) by decision name. ``corruption``: (modality,
    kind, level) applied to every test batch first."""
    run = load_run(path)
    batches, _ = load_test_batches(run, {})
    if corruption is not None:
        modality, kind, level = corruption
        generator = torch.Generator().manual_seed(0)
        batches = [corrupt(batch, modality, kind, level, generator) for batch in batches]
    parts: dict[str, list[torch.Tensor]] = {}
    present: dict[str, list[torch.Tensor]] = {}
    logits, labels, weights = [], [], {}
    with torch.no_grad():
        for batch in batches:
            result = run.model.forward_with_details(batch)
            decided = result.decision_logits or result.unimodal_logits  # late fusion: its heads are the decisions
            if not any(name.startswith("decision/") for name in result.gate_weights):
                raise SystemExit(f"{path}: {run.kind} fusion has no decision gate (late and progressive fusion have one)")
            for name, value in decided.items():
                parts.setdefault(name, []).append(torch.log_softmax(value.float(), dim=1))
                seen = result.mask.get(name, torch.ones_like(batch["label"], dtype=torch.bool))  # the fused one: every row
                present.setdefault(name, []).append(seen.bool())
            logits.append(result.logits.float())
            labels.append(batch["label"])
            for name, value in result.gate_weights.items():
                if name.startswith("decision/"):
                    weights.setdefault(name, []).append(value.float())
    # the gate names the fused decision "fused"; the decisions call it FUSED
    gate = {FUSED if name == "decision/fused" else name.removeprefix("decision/"): torch.cat(v)
            for name, v in weights.items()}
    return ({k: torch.cat(v) for k, v in parts.items()}, {k: torch.cat(v) for k, v in present.items()},
            torch.cat(logits), torch.cat(labels), gate)


def top_class_share(answers: torch.Tensor) -> float:
    """Share of the answers (N,) that are the most frequent class."""
    return round(torch.bincount(answers).max().item() / max(len(answers), 1), 3) if len(answers) else 0.0


def report(path: Path, temperatures: tuple[float, ...] = (2.0, 4.0), corruption: tuple[str, str, float] | None = None) -> dict:
    decisions, present, logits, labels, gate = decisions_of(path, corruption)

    def accuracy(scores: torch.Tensor, rows: torch.Tensor) -> float:
        return round(100 * (scores.argmax(1) == labels)[rows].float().mean().item(), 2)

    every = torch.ones_like(labels, dtype=torch.bool)
    complete = torch.stack(list(present.values()), dim=1).all(dim=1)  # (N,) every modality present
    means = {f"decision/{name.replace(FUSED, 'fused')}": round(w.mean().item(), 4) for name, w in gate.items()}
    out = {"run": str(path), "rows": len(labels), "complete_rows": int(complete.sum()), "model": accuracy(logits, every),
           "model_complete": accuracy(logits, complete), "gate": means,
           "decisions": {name: {"acc": accuracy(logp, present[name]),
                                "mean_top_prob": round(logp.exp().max(1).values[present[name]].mean().item(), 3),
                                "top_class_share": top_class_share(logp[present[name]].argmax(1))}
                         for name, logp in decisions.items()}}
    out["fixed"] = {name: accuracy(sum(w * decisions[d] for d, w in weights.items()), complete)
                    for name, weights in FIXED.items() if all(d in decisions for d in weights)}
    stacked = torch.stack(list(decisions.values()), dim=1)  # (N, D, K)
    confident = stacked.max(dim=2).values.argmax(dim=1)  # (N,)
    out["most_confident"] = accuracy(stacked[torch.arange(len(labels)), confident], complete)
    right = (stacked.argmax(dim=2) == labels[:, None]).any(dim=1)[complete]  # (complete rows,)
    out["any_right"] = round(100 * right.float().mean().item(), 2)
    weighted = torch.stack([gate[d].clamp_min(1e-30).log()[:, None] + decisions[d] for d in gate], dim=1)  # (N, D, K)
    out["gate_mixture"] = accuracy(torch.logsumexp(weighted, dim=1), complete)
    wrong = (logits.argmax(1) != labels) & complete
    out["overruled"] = {}
    for name, logp in decisions.items():
        rows = wrong & (logp.argmax(1) == labels)
        out["overruled"][name] = {"rows": int(rows.sum()), "gate": {d.replace(FUSED, "fused"): round(w[rows].mean().item(), 3)
                                                                  for d, w in gate.items()} if rows.any() else {}}
    out["gate_fused_tempered"] = {}
    for t in (1.0, *temperatures) if FUSED in decisions else ():
        softened = {**decisions, FUSED: torch.log_softmax(decisions[FUSED] / t, dim=1)}
        out["gate_fused_tempered"][str(t)] = accuracy(sum(gate[d][:, None] * softened[d] for d in gate), complete)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--corrupt", nargs=3, metavar=("MODALITY", "KIND", "LEVEL"), default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    corruption = None if args.corrupt is None else (args.corrupt[0], args.corrupt[1], float(args.corrupt[2]))
    results = [report(path, tuple(args.temperatures), corruption) for path in args.runs]
    for r in results:
        decisions = ", ".join(f"{k} {v['acc']} (top p {v['mean_top_prob']}, top class {v['top_class_share']})"
                              for k, v in r["decisions"].items())
        fixed = ", ".join(f"{k} {v}" for k, v in r["fixed"].items())
        print(f"{r['run']}: model {r['model']} | {decisions} | on the {r['complete_rows']} rows with every modality: "
              f"model {r['model_complete']}, {fixed}, most confident {r['most_confident']}, any right "
              f"{r['any_right']}, gate as a mixture {r['gate_mixture']}, gate with fused / T {r['gate_fused_tempered']} | "
              f"gate {r['gate']} | right where the model is wrong {r['overruled']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
