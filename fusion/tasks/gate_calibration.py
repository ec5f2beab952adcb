"""Held-out calibration of the modality gates (stacked generalisation, Wolpert 1992).

Gates trained on the training split see every modality at its training-set reliability; a modality that
generalises poorly (speech of an unseen speaker, say) looks perfect there, and the gate learns to trust it.
Calibration freezes everything but the gates and fits them on held-out data (the val split), with the model
in eval mode, so the gates learn how reliable each modality is on data the encoders have not seen. Make the
val split resemble deployment (e.g. a speaker not in train) for this to pay off.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fusion.data.batches import to_device
from fusion.fusions.gating import ModalityGate
from fusion.fusions.model import FusionModel


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of every ModalityGate inside `model`."""
    return [p for module in model.modules() if isinstance(module, ModalityGate) for p in module.parameters()]


def calibrate_gates(model: FusionModel, batches: Iterable[dict], epochs: int, lr: float = 3e-3,
                    label_smoothing: float = 0.0) -> list[float]:
    """Fits only the gates of `model` on `batches` (re-iterated each epoch); returns the mean loss per epoch.

    The model stays in eval mode (no modality dropout, augmentation or BatchNorm updates), exactly as at test.
    """
    params = gate_parameters(model)
    if not params:
        raise ValueError("gate calibration: the model has no ModalityGate")
    device = params[0].device
    requires = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for batch in batches:
                batch = to_device(batch, device)
                result = model.forward_with_details(batch)
                loss = F.cross_entropy(result.logits, batch["label"], label_smoothing=label_smoothing) + result.aux_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch["label"])
                count += len(batch["label"])
            losses.append(total / max(1, count))
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return losses
