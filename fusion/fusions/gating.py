"""Learnable modality gate: per-sample weights over the modalities present in each sample.

The gate scores each modality from its (projected) features and the presence pattern, then applies a
softmax restricted to the present modalities, so absent ones get exactly zero weight and the present ones
are renormalised (nothing is zero-filled into the softmax). Optional regularisers: an entropy bonus that
keeps the gate from collapsing early and a load-balance term (as in switch-style mixtures of experts).
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.fusions.base import stack_mask


def host_checks_allowed() -> bool:
    """False while a CUDA graph is captured or torch.compile traces: a check that reads a tensor value on the
    host (``bool(t)``) would break the capture (or the compiled graph), so the caller checks its inputs instead."""
    if torch.compiler.is_compiling():  # first: dynamo then never traces the CUDA query below
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def presence(mask: dict[str, torch.Tensor], modalities: list[str], check: bool = True) -> torch.Tensor:
    """(B, M) bool presence in ``modalities`` order; with ``check``, `stack_mask`'s error for a sample with no
    modality, skipped where host checks are not allowed (see `host_checks_allowed`)."""
    if check and host_checks_allowed():
        return stack_mask(mask, modalities)
    return torch.stack([mask[m].bool() for m in modalities], dim=1)  # (B, M)


class ModalityGate(nn.Module):
    """Per-sample gate over modalities.

    Args:
        modality_dims: modality -> input feature size.
        hidden_dim: width of the scoring network.
        temperature: softmax temperature.
        entropy_weight: weight of the (negative) mean gate entropy added to the loss.
        balance_weight: weight of the load-balance loss M * sum_m mean_b(w_bm)^2.
    """

    def __init__(self, modality_dims: dict[str, int], hidden_dim: int = 64, temperature: float = 1.0,
                 entropy_weight: float = 0.0, balance_weight: float = 0.0):
        super().__init__()
        self.modalities = sorted(modality_dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden_dim)) for m, d in modality_dims.items()})
        n = len(self.modalities)
        self.scorer = nn.Sequential(nn.Linear(n * hidden_dim + n, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, n))
        self.temperature = temperature
        self.entropy_weight = entropy_weight
        self.balance_weight = balance_weight

    def forward(self, features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns weights (B, M) in `self.modalities` order and the weighted regularisation loss (scalar)."""
        present = presence(mask, self.modalities, check=False)  # (B, M); the fusion calling the gate checked it
        hidden = [self.proj[m](features[m]) for m in self.modalities]
        hidden = [torch.where(present[:, i : i + 1], h, torch.zeros_like(h)) for i, h in enumerate(hidden)]
        scores = self.scorer(torch.cat(hidden + [present.to(hidden[0].dtype)], dim=1)) / self.temperature  # (B, M)
        weights = masked_softmax(scores, present)  # (B, M)
        return weights, self.regulariser(weights, present)

    def regulariser(self, weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        loss = weights.new_zeros(())
        if self.entropy_weight:
            entropy = -(weights * torch.log(weights.clamp_min(1e-9))).sum(dim=1)  # (B,)
            loss = loss - self.entropy_weight * entropy.mean()
        if self.balance_weight:
            share = weights.sum(0) / present.sum(0).clamp_min(1)  # (M,) mean weight where present
            loss = loss + self.balance_weight * len(self.modalities) * (share**2).sum()
        return loss


def masked_softmax(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 restricted to `present` entries; absent entries are exactly 0. (B, M) -> (B, M)."""
    scores = scores.masked_fill(~present, float("-inf"))
    return torch.softmax(scores, dim=1).masked_fill(~present, 0.0)

