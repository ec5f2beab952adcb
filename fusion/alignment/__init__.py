"""Contrastive alignment of modalities into one shared, L2-normalised space (768-d by default)."""

from fusion.alignment.gather import all_gather_no_grad, all_gather_with_grad
from fusion.alignment.loss import ContrastiveLoss
from fusion.alignment.projection import ProjectionHead

__all__ = ["ContrastiveLoss", "ProjectionHead", "all_gather_no_grad", "all_gather_with_grad"]
