"""Tabulates benchmarks/robustness/speaker_splits.sh: per held-out speaker, two-seed means of every check of the
gate's promise, into OUT/summary.json and OUT/summary.md. Every gap to a unimodal model comes with its standard
error from the seed spreads of both rows, and its mean over the splits: how far the seeds can resolve it.

    python benchmarks/robustness/summarize.py OUT/runs --out OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fusion.eval.robustness import gate_of
from fusion.eval.seed_spread import gap, pooled_sd

FUSIONS = ("early", "late", "progressive")  # rows named after a fusion kind, with or without a suffix (late_gs)
TOLERANCE = 0.005  # a gate weight may rise by this much between levels and still count as falling (noise of 1000 rows)


def load(run: Path) -> dict:
    """metrics.json and, where evaluated, the run's robustness result."""
    out = {"metrics": json.loads((run / "metrics.json").read_text())} if (run / "metrics.json").exists() else {}
    if (run / "report.json").exists():
        out["robustness"] = next(iter(json.loads((run / "report.json").read_text())["robustness"].values()))
    return out


def falls(weights: list[float]) -> bool:
    return all(b <= a + TOLERANCE for a, b in zip(weights, weights[1:], strict=False)) and weights[-1] < weights[0]


def mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(root: Path) -> dict:
    summary: dict = {}
    for split in sorted(p for p in root.iterdir() if p.is_dir()):
        rows: dict = {}
        for row in sorted(p for p in split.iterdir() if p.is_dir()):
            seeds = [load(seed) for seed in sorted(row.glob("seed*"))]
            trained = [s["metrics"] for s in seeds if "metrics" in s]
            # with model.single_modality_fallback a sample with one modality gets that modality's decision, so
            # these are the accuracies with the other modality removed
            decisions = {k.rsplit("/", 1)[1]: [m.get(k) for m in trained]
                         for k in (trained[0] if trained else {}) if k.startswith("test/decision_acc/")}
            entry = {"acc": mean([m.get("test/acc") for m in trained]), "seeds": len(trained),
                     "per_seed": [m.get("test/acc") for m in trained],
                     "decision_acc": {name: mean(values) for name, values in decisions.items()},
                     "decision_per_seed": decisions}
            evaluated = [s["robustness"] for s in seeds if "robustness" in s]
            if evaluated:
                entry["subsets_per_seed"] = {name: [r["subsets"][name]["acc"] for r in evaluated]
                                             for name in evaluated[0]["subsets"]}
                entry["subsets"] = {name: mean(values) for name, values in entry["subsets_per_seed"].items()}
                entry["corruption"] = {}
                for modality, curves in evaluated[0]["corruption"].items():
                    for kind in curves:
                        accs = [statistics.fmean(v) for v in zip(*[r["corruption"][modality][kind]["acc"] for r in evaluated], strict=True)]
                        gates = [r["corruption"][modality][kind]["gate"].get(gate_of(r["corruption"][modality][kind], modality))
                                 for r in evaluated]
                        gate = [statistics.fmean(v) for v in zip(*gates, strict=True)] if all(gates) else None
                        entry["corruption"][f"{modality}/{kind}"] = {
                            "levels": curves[kind]["levels"], "acc": accs, "gate": gate,
                            "gate_falls": None if gate is None else falls(gate)}
            rows[row.name] = entry
        summary[split.name] = rows
    return summary


def _alone_per_seed(row: dict) -> dict[str, list[float]]:
    """Modality -> per-seed accuracy with only that modality present: the evaluated subsets where every seed was
    evaluated, else the logged decisions (the same numbers under the single-modality fallback)."""
    evaluated = row.get("subsets_per_seed", {})
    if evaluated and all(len(v) == len(row["per_seed"]) for v in evaluated.values()):
        return evaluated
    return row["decision_per_seed"]


def _gap_text(fused: list[float | None], unimodal: list[float]) -> str:
    fused = [v for v in fused if v is not None]
    if not fused or not unimodal:
        return ""
    difference, error = gap(fused, unimodal)
    return f" ({100 * difference:+.1f}" + ("" if error is None else f" ± {100 * error:.1f}") + ")"


def _mean_gap(summary: dict, fusion: str, modality: str) -> str:
    """Mean over the splits of (fusion with only `modality` left) - (that modality's own model), ± its standard error."""
    unimodal = f"{modality}_only"
    gaps = []
    for rows in summary.values():
        row, own = rows.get(fusion), rows.get(unimodal)
        if not row or not own or not own.get("per_seed"):
            continue
        fused = [v for v in _alone_per_seed(row).get(modality, []) if v is not None]
        if fused:
            gaps.append(gap(fused, own["per_seed"]))
    if not gaps:
        return "n/a"
    difference = statistics.fmean(g for g, _ in gaps)
    errors = [e for _, e in gaps]
    spread = "" if None in errors else f" ± {100 * sum(e * e for e in errors) ** 0.5 / len(errors):.1f}"
    return f"{100 * difference:+.1f}{spread} ({len(gaps)} splits)"


def checks(summary: dict) -> list[str]:
    """The issue's acceptance lines, one table row per split and fusion."""
    lines = ["| split | fusion | clean acc (seeds) | best unimodal | image removed / audio-only "
             "| audio removed / image-only | gate falls (noise, occlusion, impulse) |", "|---|---|---|---|---|---|---|"]
    for split, rows in summary.items():
        image_only, audio_only = rows.get("image_only", {}).get("acc"), rows.get("audio_only", {}).get("acc")
        for fusion in sorted(r for r in rows if r.startswith(FUSIONS) and "degraded" not in r):  # clean rows only
            row = rows.get(fusion)
            if not row or row.get("acc") is None or image_only is None or audio_only is None:
                continue
            per_seed = _alone_per_seed(row)
            removed = {m: mean(v) for m, v in per_seed.items()}  # modality present alone -> accuracy
            gates = " ".join(f"{k.split('/')[0][0]}:{k.split('/')[1][:3]}={'yes' if v['gate_falls'] else 'NO'}"
                             for k, v in row.get("corruption", {}).items() if v["gate_falls"] is not None) or "n/a"
            audio_gap = _gap_text(per_seed.get("audio", []), rows["audio_only"]["per_seed"])
            image_gap = _gap_text(per_seed.get("image", []), rows["image_only"]["per_seed"])
            best = rows["image_only" if image_only >= audio_only else "audio_only"]
            clean_gap = _gap_text(row["per_seed"], best["per_seed"])
            lines.append(f"| {split} | {fusion} | {100 * row['acc']:.2f} ({_seeds(row['per_seed'])}) | {100 * best['acc']:.2f}{clean_gap} "
                         f"| {_pct(removed.get('audio'))} / {100 * audio_only:.2f}{audio_gap} "
                         f"| {_pct(removed.get('image'))} / {100 * image_only:.2f}{image_gap} | {gates} |")
    lines += ["", "| fusion | image removed - audio-only, mean over splits | audio removed - image-only, mean over splits |",
              "|---|---|---|"]
    for fusion in sorted({r for rows in summary.values() for r in rows if r.startswith(FUSIONS) and "degraded" not in r}):
        lines.append(f"| {fusion} | {_mean_gap(summary, fusion, 'audio')} | {_mean_gap(summary, fusion, 'image')} |")
    sd, df = pooled_sd([rows.get("audio_only", {}).get("per_seed", []) for rows in summary.values()])
    if sd is not None:
        lines += ["", f"(gap ± its standard error from the seed spreads; the audio-only model's accuracy moves by "
                      f"{100 * sd:.1f} points from seed to seed, pooled over the splits, {df} degrees of freedom)"]
    lines += ["", "| split | progressive on degraded images (seeds) |", "|---|---|"]
    for split, rows in summary.items():
        degraded = rows.get("progressive_degraded", {})
        lines.append(f"| {split} | {_pct(degraded.get('acc'))} ({_seeds(degraded.get('per_seed', []))}) |")
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _seeds(accuracies: list[float]) -> str:
    return " / ".join(f"{100 * a:.1f}" for a in accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = summarize(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = "\n".join(checks(summary)) + "\n"
    (args.out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
