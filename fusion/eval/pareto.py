"""Accuracy-vs-latency Pareto front and its plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def pareto_front(latencies: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (lower-or-equal latency and higher-or-equal accuracy,
    strictly better in one), sorted by latency."""
    if len(latencies) != len(accuracies):
        raise ValueError("latencies and accuracies must have the same length")
    front = []
    for i, (lat_i, acc_i) in enumerate(zip(latencies, accuracies, strict=True)):
        dominated = any(
            lat_j <= lat_i and acc_j >= acc_i and (lat_j < lat_i or acc_j > acc_i)
            for j, (lat_j, acc_j) in enumerate(zip(latencies, accuracies, strict=True))
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (latencies[i], -accuracies[i]))


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Writes a scatter of accuracy vs batch-1 p50 latency, one point per row, front marked.

    Args:
        rows: Report rows with ``label``, ``latency_p50_ms``, ``acc`` and ``on_front`` keys.
        path: Output PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for row in rows:
        marker = "*" if row["on_front"] else "o"
        ax.scatter(row["latency_p50_ms"], 100 * row["acc"], marker=marker, s=140 if row["on_front"] else 50)
        ax.annotate(row["label"], (row["latency_p50_ms"], 100 * row["acc"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["latency_p50_ms"])
    if front:
        ax.step([r["latency_p50_ms"] for r in front], [100 * r["acc"] for r in front], where="post",
                color="black", linewidth=1, linestyle="--", label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency p50 (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "accuracy vs latency", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
