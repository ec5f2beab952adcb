"""What every fusion returns, and the shared base class that makes `forward` return logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class FusionResult:
    """Output of `Fusion.fuse`.

    Attributes:
        logits: (B, num_classes) fused prediction.
        gate_weights: "<stage>/<modality>" -> (B,) gate weight of that modality (per stage, the weights of a
            sample sum to 1 over its present modalities and are 0 for absent ones).
        aux_loss: scalar regularisation (gate entropy / load balance), already weighted.
        unimodal_logits: modality -> (B, num_classes) per-modality decisions, where the fusion has them.
        decision_logits: name -> (B, num_classes), every decision a decision-level gate weighs (the modality
            decisions and, for progressive fusion, the fused one), where the fusion has such a gate.
        mask: modality -> (B,) bool, the presence the fusion was given (after modality dropout in training).
        own_logits: in training with clean own inputs (FusionModel.own_inputs="clean"), modality -> (B, K): each
            modality's decision on its clean input, for every row where the data has it (``own_mask``).
        own_mask: modality -> (B,) bool, the rows of ``own_logits``.
    """

    logits: torch.Tensor
    gate_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_loss: torch.Tensor | float = 0.0
    unimodal_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    decision_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: dict[str, torch.Tensor] = field(default_factory=dict)
    own_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    own_mask: dict[str, torch.Tensor] = field(default_factory=dict)


class Fusion(nn.Module):
    """Base class: subclasses implement `fuse`; `forward(features, mask)` returns the fused logits (B, K)."""

    def fuse(self, features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> FusionResult:
        raise NotImplementedError

    def forward(self, features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fuse(features, mask).logits

    def decision_gate_module(self) -> nn.Module | None:
        """The gate that `combine_decisions` trains, if this fusion can combine decisions on their own."""
        return None

    def combine_decisions(self, decisions: dict[str, torch.Tensor],
                          mask: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused logits (B, K) and gate loss from `FusionResult.decision_logits` alone (no features).

        Used to fit the decision gate on out-of-fold decisions (fusion/tasks/cross_fit.py). `mask` holds a
        (B,) presence mask per decision name.
        """
        raise NotImplementedError(f"{type(self).__name__} has no decision gate that reads decisions alone")


def stack_mask(mask: dict[str, torch.Tensor], modalities: list[str]) -> torch.Tensor:
    """Presence masks in `modalities` order: dict of (B,) -> (B, M) bool; rows with nothing present are an error."""
    present = torch.stack([mask[m].bool() for m in modalities], dim=1)  # (B, M)
    # a check on tensor values cannot be traced: an exported graph relies on its caller (fusion/inference) for it
    if not tracing() and not bool(present.any(dim=1).all()):
        raise ValueError("every sample needs at least one present modality; got a sample with none")
    return present


def tracing() -> bool:
    """True while torch.export / torch.onnx / torch.jit trace the model (no Python branches on tensor values)."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def drop_absent(features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], modalities: list[str]) -> dict[str, torch.Tensor]:
    """Replaces the placeholder features of absent samples by zeros (also NaN/inf placeholders), (B, D) each.

    Absent modalities already get zero gate weight; this keeps whatever their encoder produced from reaching
    any arithmetic (0 * NaN would still be NaN).
    """
    return {m: torch.where(mask[m].bool().unsqueeze(-1), features[m], torch.zeros_like(features[m])) for m in modalities}


def named_weights(stage: str, modalities: list[str], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, M) gate weights -> {"<stage>/<modality>": (B,)}."""
    return {f"{stage}/{m}": weights[:, i] for i, m in enumerate(modalities)}
