"""robustness.png: accuracy and gate weight of each modality as it is corrupted step by step."""

from __future__ import annotations

from pathlib import Path

from fusion.eval.robustness import gate_of


def plot_robustness(robustness: dict[str, dict], path: str | Path) -> Path:
    """One row per modality: accuracy vs corruption level (left) and that modality's gate weight (right).

    Args:
        robustness: model name -> ``evaluate_robustness`` output; one line per model and corruption kind.
        path: Output PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = sorted({m for result in robustness.values() for m in result["corruption"]})
    fig, axes = plt.subplots(len(modalities), 2, figsize=(10, 3.2 * len(modalities)), dpi=110, squeeze=False)
    styles = {"noise": "-", "occlusion": "--", "impulse": ":"}
    for row, modality in enumerate(modalities):
        accuracy_ax, gate_ax = axes[row]
        for index, (model, result) in enumerate(robustness.items()):
            color = f"C{index % 10}"
            for kind, curve in result["corruption"].get(modality, {}).items():
                label, style = f"{model} · {kind}", styles.get(kind, "-.")
                accuracy_ax.plot(curve["levels"], [100 * a for a in curve["acc"]], style, color=color, marker="o",
                                 markersize=3, label=label)
                gate = gate_of(curve, modality)
                if gate is not None:
                    gate_ax.plot(curve["levels"], curve["gate"][gate], style, color=color, marker="o", markersize=3,
                                 label=f"{label} ({gate.split('/')[0]} gate)")
        accuracy_ax.set_ylabel("test accuracy (%)")
        gate_ax.set_ylabel(f"mean gate weight of {modality}")
        gate_ax.set_ylim(0, 1)
        for ax in (accuracy_ax, gate_ax):
            ax.set_xlabel(f"corruption level of {modality}")
            ax.grid(True, alpha=0.3)
        accuracy_ax.set_title(f"{modality} corrupted", fontsize=9)
        if gate_ax.lines:
            gate_ax.legend(fontsize=6, loc="best")
        else:
            gate_ax.text(0.5, 0.5, "no gate", ha="center", va="center", transform=gate_ax.transAxes)
            accuracy_ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
