"""A modality's own decision head: a small MLP from its pooled features to class logits."""

from __future__ import annotations

from torch import nn


def decision_head(in_dim: int, hidden_dim: int, num_classes: int, dropout: float, norm: bool) -> nn.Sequential:
    """Linear, [LayerNorm], GELU, Dropout, Linear: (B, in_dim) -> (B, num_classes).

    The LayerNorm removes each sample's scale and offset before the decision (they move with, e.g., a new
    speaker's voice and loudness); without it the layers keep the indices 0 and 3 of earlier runs."""
    layers = [nn.Linear(in_dim, hidden_dim), *([nn.LayerNorm(hidden_dim)] if norm else []), nn.GELU(),
              nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)]
    return nn.Sequential(*layers)
