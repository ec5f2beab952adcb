"""report.json, report.md and pareto.png for an accuracy-vs-latency evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from fusion.eval.pareto import pareto_front, plot_pareto
from fusion.eval.robustness import gate_of
from fusion.eval.robustness_plot import plot_robustness


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}".rstrip()
    return f"{value:.0f} {unit}".rstrip()


def mark_front(rows: list[dict]) -> None:
    """Sets ``on_front`` on every row, per device (CPU and GPU latencies are not comparable)."""
    for device in {row["device"] for row in rows}:
        subset = [row for row in rows if row["device"] == device]
        front = set(pareto_front([r["latency_p50_ms"] for r in subset], [r["acc"] for r in subset]))
        for i, row in enumerate(subset):
            row["on_front"] = i in front


def _rows_table(rows: list[dict]) -> list[str]:
    batch_sizes = sorted({int(bs) for row in rows for bs in row["throughput"]})
    header = ["model", "fusion", "epochs", "variant", "device", "accuracy", "macro-F1", "p50 / p95 / p99 latency (ms)"]
    header += [f"throughput bs={bs} (samples/s)" for bs in batch_sizes]
    header += ["params", "FLOPs / sample", "peak memory", "Pareto"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["model"], row["fusion"], row.get("epochs_trained") or "?", row["variant"], row["device"],
            f"{100 * row['acc']:.2f} %",
            f"{100 * row['macro_f1']:.2f} %",
            f"{row['latency_p50_ms']:.3f} / {row['latency_p95_ms']:.3f} / {row['latency_p99_ms']:.3f}",
        ]
        cells += [f"{row['throughput'][str(bs)]:.0f}" if str(bs) in row["throughput"] else "n/a" for bs in batch_sizes]
        cells += [_si(row["params"]), _si(row["flops"]), _si(row["peak_memory_bytes"], "B"),
                  "★" if row.get("on_front") else ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def fastest_keeping_accuracy(rows: list[dict]) -> list[dict]:
    """Per (model, device): the fastest variant (batch-1 p50) whose accuracy is at least the fp32 row's, with its
    speed-up over fp32 eager. Models without an fp32 row on a device are left out."""
    best = []
    for model, device in dict.fromkeys((row["model"], row["device"]) for row in rows):
        mine = [row for row in rows if row["model"] == model and row["device"] == device]
        fp32 = next((row for row in mine if row["variant"] == "fp32"), None)
        if fp32 is None:
            continue
        fastest = min((row for row in mine if row["acc"] >= fp32["acc"]), key=lambda row: row["latency_p50_ms"])
        best.append({"model": model, "fusion": fastest["fusion"], "device": device, "variant": fastest["variant"],
                     "acc": fastest["acc"], "fp32_acc": fp32["acc"], "latency_p50_ms": fastest["latency_p50_ms"],
                     "fp32_latency_p50_ms": fp32["latency_p50_ms"],
                     "speedup_over_fp32": fp32["latency_p50_ms"] / fastest["latency_p50_ms"]})
    return best


def _fastest_table(best: list[dict]) -> list[str]:
    lines = ["| model | fusion | device | fastest variant keeping the fp32 accuracy | accuracy (fp32) | p50 ms (fp32) "
             "| speed-up over fp32 eager |", "|---|---|---|---|---|---|---|"]
    for b in best:
        lines.append(f"| {b['model']} | {b['fusion']} | {b['device']} | {b['variant']} | {100 * b['acc']:.2f} % "
                     f"({100 * b['fp32_acc']:.2f} %) | {b['latency_p50_ms']:.3f} ({b['fp32_latency_p50_ms']:.3f}) | "
                     f"{b['speedup_over_fp32']:.2f}x |")
    return lines


def _subsets_table(robustness: dict[str, dict]) -> list[str]:
    subsets = list(next(iter(robustness.values()))["subsets"])
    lines = ["| model | fusion | " + " | ".join(subsets) + " |", "|---|---|" + "---|" * len(subsets)]
    for model, result in robustness.items():
        cells = [f"{100 * result['subsets'][s]['acc']:.2f} %" if s in result["subsets"] else "n/a" for s in subsets]
        lines.append(f"| {model} | {result.get('fusion', '?')} | " + " | ".join(cells) + " |")
    return lines


def _corruption_table(robustness: dict[str, dict]) -> list[str]:
    lines = ["| model | modality | corruption | accuracy (%) by level | gate weight by level | relative robustness "
             "| effective robustness (vs late) |", "|---|---|---|---|---|---|---|"]
    for model, result in robustness.items():
        for modality, curves in result["corruption"].items():
            for kind, curve in curves.items():
                levels = ", ".join(f"{lv:g}: {100 * acc:.1f}" for lv, acc in zip(curve["levels"], curve["acc"], strict=True))
                gate = gate_of(curve, modality)
                weights = "n/a" if gate is None else f"{gate}: " + ", ".join(f"{w:.2f}" for w in curve["gate"][gate])
                effective = curve.get("effective_robustness")
                lines.append(f"| {model} | {modality} | {kind} | {levels} | {weights} "
                             f"| {100 * curve['relative_robustness']:.2f} | "
                             f"{'n/a' if effective is None else f'{100 * effective:+.2f}'} |")
    return lines


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``report.json``, ``report.md``, ``pareto.png`` and (with robustness results) ``robustness.png``.

    Args:
        report: ``{"machine": {...}, "settings": {...}, "rows": [...], "robustness": {...}, "skipped": {...}}``
            where each row has ``model, fusion, variant, device, acc, macro_f1, latency_p50_ms,
            latency_p95_ms, latency_p99_ms, throughput ({batch size: samples/s}), params, flops,
            peak_memory_bytes``.
        out_dir: Output folder (created).

    Returns:
        Paths of the written files keyed ``json``, ``md``, ``png``, ``robustness_png``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report["rows"]
    if not rows:
        raise ValueError("report has no rows")
    mark_front(rows)
    for row in rows:
        row["label"] = f"{row['model']}/{row['variant']}" + ("" if row["device"] == "cpu" else f"@{row['device']}")
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "pareto.png"}
    report["fastest"] = fastest_keeping_accuracy(rows)
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")

    machine = report.get("machine", {})
    settings = report.get("settings", {})
    md = ["# Accuracy vs latency", ""]
    md += [f"- {key}: {value}" for key, value in machine.items()]
    md += [f"- {key}: {value}" for key, value in settings.items()]
    md += ["", "Latency is per sample at batch size 1 (after warm-up, device synchronised around each call); "
           "FLOPs per sample at batch size 1 (torch.utils.flop_counter; int8 rows count the fp32 graph). "
           "★ = on the accuracy/latency Pareto front of its device.", ""]
    md += _rows_table(rows)
    if report["fastest"]:
        md += ["", "Fastest variant per model and device whose accuracy is at least the fp32 model's:", ""]
        md += _fastest_table(report["fastest"])
    if report.get("robustness"):
        md += ["", "## Robustness", "", "Accuracy on the test split with only these modalities present (the others "
               "removed; rows left with no input are not counted):", ""]
        md += _subsets_table(report["robustness"])
        md += ["", "One modality corrupted step by step (fusion/data/corruption.py: noise std / signal std, occluded "
               "share, share of impulse-hit entries; for text the share of replaced / deleted tokens). Gate weight = "
               "mean weight of the corrupted modality in the model's last gate, over the test rows (robustness.png "
               "plots both). Robustness scores are areas normalised to the level span, in accuracy points.", ""]
        md += _corruption_table(report["robustness"])
    if report.get("skipped"):
        md += ["", "## Not evaluated", ""] + [f"- {key}: {why}" for key, why in report["skipped"].items()]
    try:
        plot_pareto(rows, paths["png"], title=", ".join(str(machine[k]) for k in ("gpu", "cpu") if k in machine))
    except ImportError as err:  # matplotlib absent: the table and JSON are still complete
        md += ["", f"(pareto.png not written: {err})"]
        del paths["png"]
    if report.get("robustness"):
        try:
            paths["robustness_png"] = plot_robustness(report["robustness"], out_dir / "robustness.png")
        except ImportError as err:
            md += ["", f"(robustness.png not written: {err})"]
    paths["md"].write_text("\n".join(md) + "\n")
    return paths
