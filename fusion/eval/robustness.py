"""Robustness of a fusion model to missing modalities and to one modality corrupted step by step.

Summary numbers follow MultiBench (Liang et al., 2021, "MultiBench: Multiscale Benchmarks for Multimodal
Representation Learning"): *relative robustness* is the area under the accuracy-vs-noise curve, *effective
robustness* is the area between the curve and the one late fusion would have at the model's clean accuracy,
i.e. ``f(l) - (lf(l) + f(0) - lf(0))``. Both areas are divided by the span of the noise levels, so they are
on the accuracy scale and independent of how many levels were evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch

from fusion.data.batches import select_rows, to_device
from fusion.data.corruption import corrupt
from fusion.eval.accuracy import batch_size_of, classification_metrics

DEFAULT_NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_CORRUPTIONS = ("noise", "occlusion", "impulse")  # impulse: a kind training does not use by default


def _copy_batch(batch: dict) -> dict:
    copied = dict(batch)
    copied["mask"] = {key: value.clone() for key, value in batch["mask"].items()}
    return copied


def remove_modality(batch: dict, modality: str) -> dict:
    """Copy of ``batch`` with ``modality`` marked missing for every sample.

    Dense values (image, audio, video) are also zeroed, as the data pipeline's placeholders for an empty
    manifest cell are; token ids are kept (an all-padding attention mask is not a valid text input), the mask
    alone tells fusions to ignore them. A model honouring the mask gives the same output as with the mask alone.
    """
    if modality not in batch["mask"]:
        raise KeyError(f"modality {modality!r} not in batch (has {sorted(batch['mask'])})")
    removed = _copy_batch(batch)
    removed["mask"][modality] = torch.zeros_like(batch["mask"][modality])
    if isinstance(batch[modality], torch.Tensor):
        removed[modality] = torch.zeros_like(batch[modality])
    return removed


def keep_only(batch: dict, modalities: Sequence[str]) -> dict:
    """``batch`` with every other modality removed, keeping only samples that still have one (fusions need one)."""
    kept = batch
    for modality in sorted(batch["mask"]):
        if modality not in modalities:
            kept = remove_modality(kept, modality)
    still_present = torch.stack(list(kept["mask"].values()), dim=1).any(dim=1)  # (B,)
    return kept if bool(still_present.all()) else select_rows(kept, still_present)


def without_modality(batch: dict, modality: str) -> dict:
    """``remove_modality``, keeping only samples that still have another modality."""
    return keep_only(batch, [m for m in batch["mask"] if m != modality])


def add_noise(batch: dict, modality: str, level: float, generator: torch.Generator) -> dict:
    """Copy of ``batch`` with Gaussian noise (token replacement for text) of strength ``level`` on one modality."""
    return corrupt(batch, modality, "noise", level, generator)


def predict_with_gates(model: Callable[[dict], torch.Tensor], batches: Sequence[dict], device: torch.device | str,
                       transform: Callable[[dict], dict] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Predicted and true labels (N,) and, for models with ``forward_with_details``, the mean of every gate weight
    over the samples where its modality was present: ``{"<stage>/<modality>": float}``."""
    predictions, labels, sums, counts = [], [], {}, {}
    detailed = hasattr(model, "forward_with_details")
    with torch.inference_mode():
        for batch in batches:
            batch = transform(batch) if transform is not None else batch
            if batch_size_of(batch) == 0:
                continue
            moved = to_device(batch, device)
            if detailed:
                result = model.forward_with_details(moved)
                logits = result.logits
                for name, weights in result.gate_weights.items():
                    modality = name.split("/")[-1]
                    present = moved["mask"].get(modality, torch.ones_like(weights, dtype=torch.bool))
                    sums[name] = sums.get(name, 0.0) + float(weights.float()[present].sum())
                    counts[name] = counts.get(name, 0) + int(present.sum())
            else:
                logits = model(moved)  # (B, C)
            predictions.append(logits.argmax(dim=-1).cpu())
            labels.append(batch["label"].cpu())
    gates = {name: sums[name] / counts[name] for name in sums if counts[name]}
    return torch.cat(predictions), torch.cat(labels), gates


def _area(levels: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over ``levels`` divided by the span of ``levels``."""
    if len(levels) != len(values) or len(levels) < 2:
        raise ValueError("need at least two levels and one value per level")
    area = sum((levels[i + 1] - levels[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(levels) - 1))
    return area / (levels[-1] - levels[0])


def relative_robustness(levels: Sequence[float], accuracies: Sequence[float]) -> float:
    """Area under the accuracy-vs-noise curve, normalised to the level span (MultiBench relative robustness)."""
    return _area(levels, accuracies)


def effective_robustness(
    levels: Sequence[float], accuracies: Sequence[float], late_fusion_accuracies: Sequence[float]
) -> float:
    """Normalised area of ``f(l) - (lf(l) + f(0) - lf(0))``: positive when accuracy falls slower than late fusion's."""
    if len(accuracies) != len(late_fusion_accuracies):
        raise ValueError("accuracy curves must have the same levels")
    offset = accuracies[0] - late_fusion_accuracies[0]
    return _area(levels, [f - (lf + offset) for f, lf in zip(accuracies, late_fusion_accuracies, strict=True)])


def subset_name(modalities: Sequence[str]) -> str:
    return "+".join(sorted(modalities))


def evaluate_robustness(
    model: Callable[[dict], torch.Tensor],
    batches: Sequence[dict],
    device: torch.device | str,
    num_classes: int,
    levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
    seed: int = 0,
    log: Callable[[str], None] = lambda message: None,
    corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
) -> dict:
    """Accuracy with every subset of the modalities present, and accuracy and gate weights as each modality is
    corrupted step by step by each corruption kind (fusion/data/corruption.py).

    Accuracy for a subset is measured on the samples that keep at least one of its modalities (their count is
    reported); a sample left with no input cannot be classified. Text has no occlusion.

    Returns:
        ``{"subsets": {"audio+image": {"acc", "samples"}, ...}, "removed": {modality: acc},
        "corruption": {modality: {kind: {"levels", "acc", "gate": {gate name: [mean weight per level]},
        "relative_robustness"}}}}``.
    """
    modalities = sorted(batches[0]["mask"])
    result: dict = {"subsets": {}, "removed": {}, "corruption": {}}
    for size in range(len(modalities), 0, -1):
        for subset in combinations(modalities, size):
            predictions, labels, _ = predict_with_gates(model, batches, device, lambda b, s=subset: keep_only(b, s))
            accuracy = classification_metrics(predictions, labels, num_classes)["acc"]
            result["subsets"][subset_name(subset)] = {"acc": accuracy, "samples": int(labels.numel())}
            if size == len(modalities) - 1:
                result["removed"][next(m for m in modalities if m not in subset)] = accuracy
    for modality in modalities:
        curves = {}
        for kind in corruptions:
            if kind == "occlusion" and isinstance(batches[0][modality], dict) and "input_ids" in batches[0][modality]:
                continue
            accuracies, gates = [], {}
            for level in levels:
                generator = torch.Generator().manual_seed(seed)
                noisy = lambda b, m=modality, k=kind, lv=level, g=generator: corrupt(b, m, k, lv, g)  # noqa: E731
                predictions, labels, means = predict_with_gates(model, batches, device, noisy)
                accuracies.append(classification_metrics(predictions, labels, num_classes)["acc"])
                for name, weight in means.items():
                    gates.setdefault(name, []).append(weight)
            curves[kind] = {"levels": list(levels), "acc": accuracies, "gate": gates,
                            "relative_robustness": relative_robustness(levels, accuracies)}
            log(f"    robustness {modality} {kind}: acc {[round(a, 3) for a in accuracies]}")
        result["corruption"][modality] = curves
    return result


def gate_of(curve: dict, modality: str) -> str | None:
    """The gate whose weight of ``modality`` the report plots: the last one the model applies (decision, then
    the last stage, then the feature gate), or None for a model without gates."""
    names = [name for name in curve["gate"] if name.endswith(f"/{modality}")]
    for prefix in ("decision/", "stage", "feature/"):
        matching = sorted(name for name in names if name.startswith(prefix))
        if matching:
            return matching[-1]
    return None


def add_effective_robustness(results: dict[str, dict], late_fusion_name: str) -> None:
    """Adds ``effective_robustness`` to each model's noise curves, against the model named ``late_fusion_name``.

    Args:
        results: ``{model name: evaluate_robustness(...) output}``, modified in place.
        late_fusion_name: Key of the late-fusion model (its own effective robustness is 0).
    """
    reference = results[late_fusion_name]["corruption"]
    for robustness in results.values():
        for modality, curves in robustness["corruption"].items():
            for kind, curve in curves.items():
                late = reference.get(modality, {}).get(kind)
                if late is not None and late["levels"] == curve["levels"]:
                    curve["effective_robustness"] = effective_robustness(curve["levels"], curve["acc"], late["acc"])
