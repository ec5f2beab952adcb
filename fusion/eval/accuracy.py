"""Accuracy and macro-F1 of a classifier over batches in the project's batch-dict format."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fusion.data.batches import to_device


def batch_size_of(batch: dict) -> int:
    """Number of samples in a batch dict (length of its labels)."""
    return int(batch["label"].shape[0])


def predict(
    model: Callable[[dict], torch.Tensor],
    batches: Iterable[dict],
    device: torch.device | str,
    transform: Callable[[dict], dict] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels over ``batches``.

    Args:
        model: ``model(batch) -> (B, C)`` logits.
        batches: CPU batch dicts with a ``label`` entry.
        device: Where the model runs.
        transform: Applied to each CPU batch before it is moved (masking, noise); may drop samples.

    Returns:
        ``(predictions (N,), labels (N,))`` on CPU.
    """
    predictions, labels = [], []
    with torch.inference_mode():
        for batch in batches:
            if transform is not None:
                batch = transform(batch)
            if batch_size_of(batch) == 0:
                continue
            logits = model(to_device(batch, device))  # (B, C)
            predictions.append(logits.argmax(dim=-1).cpu())
            labels.append(batch["label"].cpu())
    return torch.cat(predictions), torch.cat(labels)


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (mean over the classes that occur in labels or predictions)."""
    if predictions.shape != labels.shape or predictions.numel() == 0:
        raise ValueError(f"need equal, non-empty shapes, got {tuple(predictions.shape)} and {tuple(labels.shape)}")
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # (true, predicted)
    confusion.index_put_((labels.long(), predictions.long()), torch.ones_like(labels, dtype=torch.long), accumulate=True)
    true_positive = confusion.diag().double()
    support = confusion.sum(dim=1).double()
    predicted = confusion.sum(dim=0).double()
    present = (support + predicted) > 0
    f1 = 2 * true_positive / (support + predicted).clamp(min=1)
    return {
        "acc": float(true_positive.sum() / labels.numel()),
        "macro_f1": float(f1[present].mean()),
    }
