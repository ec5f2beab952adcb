"""Per-modality towers (encoder + projection head) that embed every modality into one shared space."""

import torch
from torch import nn

from fusion.alignment.projection import ProjectionHead


class AlignmentModel(nn.Module):
    """Encoders and projection heads keyed by modality; ``embed`` maps a batch dict to unit vectors.

    The encoders live in ``self.encoders`` (state-dict keys ``encoders.<modality>.*``), the same names as in
    the fusion models, so aligned towers can seed them.

    Args:
        encoders: modality -> encoder with ``out_dim``, mapping that modality's batch value to (B, out_dim).
        projections: modality -> head mapping (B, out_dim) to (B, E); defaults to a linear
            ``ProjectionHead(out_dim, 768)`` per encoder.
    """

    def __init__(self, encoders: nn.ModuleDict, projections: nn.ModuleDict | None = None):
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"alignment needs at least two modality encoders, got {sorted(encoders)}")
        if projections is None:
            projections = nn.ModuleDict({m: ProjectionHead(enc.out_dim) for m, enc in encoders.items()})
        if set(projections) != set(encoders):
            raise ValueError(f"projections {sorted(projections)} must match encoders {sorted(encoders)}")
        self.encoders = encoders
        self.projections = projections

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def embed_modality(self, modality: str, value: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """One modality's batch value -> (B, E) unit-norm embeddings."""
        return self.projections[modality](self.encoders[modality](value))  # (B, E)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Embeds every modality of the batch that has a tower.

        Args:
            batch: the batch dict (``image`` (B, C, H, W), ``audio`` (B, L), ``text`` {input_ids, attention_mask}).

        Returns:
            modality -> (B, E) embeddings (rows of missing modalities are computed from the placeholders and
            must be masked by the caller).
        """
        return {m: self.embed_modality(m, batch[m]) for m in self.modalities if m in batch}
