"""Late (decision-level) fusion: one classifier per modality, decisions combined by the modality gate."""

from __future__ import annotations

import torch
from torch import nn

from fusion.fusions.base import Fusion, FusionResult, drop_absent, named_weights
from fusion.fusions.gating import ModalityGate, presence


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """Detached log-probabilities and entropy of a decision: (B, K) -> (B, K + 1)."""
    logp = torch.log_softmax(logits.detach().float(), dim=1)
    entropy = -(logp.exp() * logp).sum(dim=1, keepdim=True)
    return torch.cat([logp, entropy], dim=1).to(logits.dtype)


class LateFusion(Fusion):
    """Per-modality heads; fused log-probabilities are the gate-weighted sum of each head's log-probabilities.

    The gate sees each modality's features and the confidence of its decision, so a modality that is unsure
    on a sample (e.g. speech of an unseen speaker) can be down-weighted for that sample.

    Args:
        modality_dims: modality -> pooled feature size.
        num_classes: output classes.
        hidden_dim: hidden width of each head.
        dropout: dropout in the heads.
        gate: keyword arguments of ModalityGate.
        head_norm: a LayerNorm after each head's first layer (recipes: on; off builds the heads of earlier runs).
    """

    def __init__(self, modality_dims: dict[str, int], num_classes: int, hidden_dim: int = 128, dropout: float = 0.1,
                 gate: dict | None = None, head_norm: bool = False):
        super().__init__()
        self.modalities = sorted(modality_dims)
        def head(d: int) -> nn.Sequential:  # (B, d) -> (B, num_classes)
            norm = [nn.LayerNorm(hidden_dim)] if head_norm else []
            return nn.Sequential(nn.Linear(d, hidden_dim), *norm, nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

        self.heads = nn.ModuleDict({m: head(d) for m, d in modality_dims.items()})
        self.gate = ModalityGate({m: d + num_classes + 1 for m, d in modality_dims.items()}, **(gate or {}))

    def fuse(self, features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> FusionResult:
        presence(mask, self.modalities)
        features = drop_absent(features, mask, self.modalities)
        decisions = {m: self.heads[m](features[m]) for m in self.modalities}  # m -> (B, K)
        gate_in = {m: torch.cat([features[m], confidence_features(decisions[m])], dim=1) for m in self.modalities}
        weights, reg = self.gate(gate_in, mask)  # (B, M)
        logp = torch.stack([torch.log_softmax(decisions[m], dim=1) for m in self.modalities], dim=1)  # (B, M, K)
        logits = (weights.unsqueeze(-1) * logp).sum(dim=1)  # (B, K)
        return FusionResult(logits, named_weights("decision", self.modalities, weights), reg, decisions)
