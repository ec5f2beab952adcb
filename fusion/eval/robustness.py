"""Robustness of a fusion model to a missing modality and to increasing noise on one modality.

Summary numbers follow MultiBench (Liang et al., 2021, "MultiBench: Multiscale Benchmarks for Multimodal
Representation Learning"): *relative robustness* is the area under the accuracy-vs-noise curve, *effective
robustness* is the area between the curve and the one late fusion would have at the model's clean accuracy,
i.e. ``f(l) - (lf(l) + f(0) - lf(0))``. Both areas are divided by the span of the noise levels, so they are
on the accuracy scale and independent of how many levels were evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fusion.data.batches import select_rows
from fusion.eval.accuracy import classification_metrics, predict

DEFAULT_NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


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


def without_modality(batch: dict, modality: str) -> dict:
    """``remove_modality``, keeping only samples that still have another modality (fusions need one)."""
    removed = remove_modality(batch, modality)
    still_present = torch.stack(list(removed["mask"].values()), dim=1).any(dim=1)  # (B,)
    return removed if bool(still_present.all()) else select_rows(removed, still_present)


def add_noise(batch: dict, modality: str, level: float, generator: torch.Generator) -> dict:
    """Copy of ``batch`` with noise of strength ``level`` (0 = clean, 1 = as strong as the signal) on one modality.

    Dense inputs (image, audio, video) get Gaussian noise with standard deviation ``level`` times each
    sample's own standard deviation (signal-to-noise ratio ``1 / level**2``). Text gets each attended token
    replaced, with probability ``level``, by a token drawn from the batch's attended tokens.
    """
    if level < 0:
        raise ValueError(f"noise level must be >= 0, got {level}")
    if modality not in batch:
        raise KeyError(f"modality {modality!r} not in batch (has {sorted(batch['mask'])})")
    noisy = _copy_batch(batch)
    value = batch[modality]
    if isinstance(value, dict):  # text: {"input_ids": (B, T), "attention_mask": (B, T)}
        input_ids, attended = value["input_ids"], value["attention_mask"].bool()
        pool = input_ids[attended]  # (K,)
        replace = (torch.rand(input_ids.shape, generator=generator) < level) & attended  # (B, T)
        random_ids = pool[torch.randint(len(pool), input_ids.shape, generator=generator)]  # (B, T)
        noisy[modality] = {**value, "input_ids": torch.where(replace, random_ids, input_ids)}
    else:
        dims = tuple(range(1, value.dim()))
        scale = value.float().std(dim=dims, keepdim=True) if dims else value.float().std()  # (B, 1, ...)
        noise = torch.randn(value.shape, generator=generator) * scale * level
        noisy[modality] = (value.float() + noise).to(value.dtype)
    return noisy


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


def evaluate_robustness(
    model: Callable[[dict], torch.Tensor],
    batches: Sequence[dict],
    device: torch.device | str,
    num_classes: int,
    levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
    seed: int = 0,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Accuracy with each modality removed and accuracy-vs-noise curves per modality.

    Accuracy without a modality is measured on the samples that keep at least one other modality (their count
    is reported as ``removed_samples``); a sample left with no input cannot be classified.

    Returns:
        ``{"removed": {modality: acc}, "removed_samples": {modality: n}, "noise": {modality: {"levels": [...],
        "acc": [...], "relative_robustness": float}}}``.
    """
    modalities = sorted(batches[0]["mask"])
    result: dict = {"removed": {}, "removed_samples": {}, "noise": {}}
    for modality in modalities:
        predictions, labels = predict(model, batches, device, lambda b, m=modality: without_modality(b, m))
        result["removed"][modality] = classification_metrics(predictions, labels, num_classes)["acc"]
        result["removed_samples"][modality] = int(labels.numel())
        curve = []
        for level in levels:
            generator = torch.Generator().manual_seed(seed)
            noisy = lambda b, m=modality, lv=level, g=generator: add_noise(b, m, lv, g)  # noqa: E731
            predictions, labels = predict(model, batches, device, noisy)
            curve.append(classification_metrics(predictions, labels, num_classes)["acc"])
        result["noise"][modality] = {
            "levels": list(levels),
            "acc": curve,
            "relative_robustness": relative_robustness(levels, curve),
        }
        log(f"    robustness {modality}: removed acc {result['removed'][modality]:.3f}, noise acc {curve}")
    return result


def add_effective_robustness(results: dict[str, dict], late_fusion_name: str) -> None:
    """Adds ``effective_robustness`` to each model's noise curves, against the model named ``late_fusion_name``.

    Args:
        results: ``{model name: evaluate_robustness(...) output}``, modified in place.
        late_fusion_name: Key of the late-fusion model (its own effective robustness is 0).
    """
    reference = results[late_fusion_name]["noise"]
    for robustness in results.values():
        for modality, curve in robustness["noise"].items():
            if modality in reference and reference[modality]["levels"] == curve["levels"]:
                curve["effective_robustness"] = effective_robustness(
                    curve["levels"], curve["acc"], reference[modality]["acc"]
                )
