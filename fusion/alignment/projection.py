"""Projection head into the shared, L2-normalised embedding space (768-d by default)."""

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Maps one modality's pooled features to a unit vector in the shared space.

    A linear map as in CLIP (Radford et al., 2021) or, with ``hidden_dim``, a two-layer MLP
    (Linear-GELU-Dropout-Linear) as in SimCLR-style heads.

    Args:
        in_dim: feature size of the encoder (its ``out_dim``).
        embed_dim: size of the shared space.
        hidden_dim: hidden size of the MLP; ``None`` for a single linear map.
        dropout: dropout before the last linear layer (MLP only).
    """

    def __init__(
        self, in_dim: int, embed_dim: int = 768, hidden_dim: int | None = None, dropout: float = 0.0
    ):
        super().__init__()
        if in_dim <= 0 or embed_dim <= 0:
            raise ValueError(f"in_dim ({in_dim}) and embed_dim ({embed_dim}) must be positive")
        self.embed_dim = embed_dim
        if hidden_dim is None:
            self.proj = nn.Linear(in_dim, embed_dim, bias=False)
        else:
            self.proj = nn.Sequential(
                nn.Linear(in_dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, embed_dim),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Projects and normalises.

        Args:
            features: (B, in_dim) pooled encoder features.

        Returns:
            (B, embed_dim) embeddings with unit L2 norm.
        """
        return F.normalize(self.proj(features), dim=-1)  # (B, E)
