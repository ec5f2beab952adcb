"""Early (feature-level) fusion: modality features are projected, gated and joined before one shared trunk."""

from __future__ import annotations

import torch
from torch import nn

from fusion.fusions.base import Fusion, FusionResult, drop_absent, named_weights
from fusion.fusions.gating import ModalityGate, presence


class EarlyFusion(Fusion):
    """Projects each modality to `hidden_dim`, scales it by its gate weight, concatenates, classifies with an MLP.

    A linear head per modality reads its projection (before the gate), so the task can train each projection
    to be useful on its own: the trunk then still gets informative features when the other modalities are
    missing.

    Args:
        modality_dims: modality -> pooled feature size.
        num_classes: output classes.
        hidden_dim: projection and trunk width.
        num_layers: hidden layers of the trunk.
        dropout: dropout in the trunk.
        gate: keyword arguments of ModalityGate.
    """

    def __init__(self, modality_dims: dict[str, int], num_classes: int, hidden_dim: int = 128, num_layers: int = 2,
                 dropout: float = 0.1, gate: dict | None = None):
        super().__init__()
        self.modalities = sorted(modality_dims)
        self.gate = ModalityGate(modality_dims, **(gate or {}))
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU())
                                   for m, d in modality_dims.items()})
        layers, width = [], len(self.modalities) * (hidden_dim + 1)
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers, nn.Linear(width, num_classes))
        self.heads = nn.ModuleDict({m: nn.Linear(hidden_dim, num_classes) for m in self.modalities})

    def fuse(self, features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> FusionResult:
        present = presence(mask, self.modalities)  # (B, M)
        features = drop_absent(features, mask, self.modalities)
        weights, reg = self.gate(features, mask)  # (B, M)
        scale = weights * present.sum(1, keepdim=True)  # (B, M): 1 each under a uniform gate, 0 if absent
        projected = {m: self.proj[m](features[m]) for m in self.modalities}  # m -> (B, H)
        joined = [projected[m] * scale[:, i : i + 1] for i, m in enumerate(self.modalities)]
        joined.append(present.to(joined[0].dtype))
        logits = self.trunk(torch.cat(joined, dim=1))  # (B, K)
        unimodal = {m: self.heads[m](projected[m]) for m in self.modalities}  # m -> (B, K)
        return FusionResult(logits, named_weights("feature", self.modalities, weights), reg, unimodal)
