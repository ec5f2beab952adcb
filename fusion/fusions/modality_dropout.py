"""Modality dropout over subsets: a training sample is shown a random non-empty part of its modalities.

Independent per-modality drops (each modality hidden with probability p) mostly produce the full set and
rarely the small subsets a deployed model meets when inputs go missing; with three modalities a sample keeps
one modality alone with probability about 3p^2. Here, with probability ``p``, a sample's presence pattern is
replaced by one of the 2^k - 2 proper non-empty subsets of its k present modalities, drawn uniformly, so every
subset is trained as often as every other (Neverova et al. 2016, "ModDrop"; the subset form as in
"Multimodal learning with missing modalities", Ma et al. 2022). Samples with one modality are never changed.
"""

from __future__ import annotations

import torch


def modality_dropout(mask: dict[str, torch.Tensor], p: float, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Hides modalities of a share ``p`` of the samples, showing each a uniformly drawn proper non-empty subset.

    Args:
        mask: modality -> (B,) bool presence.
        p: share of samples (among those with two or more present modalities) given a proper subset.
        generator: CPU random generator (default: the global one on the mask's device).

    Returns:
        A new mask dict that never turns an absent modality on and never leaves a sample with nothing.
    """
    if p <= 0:
        return mask
    modalities = sorted(mask)
    present = torch.stack([mask[m].bool() for m in modalities], dim=1)  # (B, M)
    device = present.device
    draw = lambda *shape: torch.rand(shape, generator=generator, device="cpu" if generator else device).to(device)  # noqa: E731
    count = present.sum(dim=1)  # (B,) k
    subsets = (2 ** count - 2).clamp_min(0)  # (B,) proper non-empty subsets of the present modalities
    chosen = (draw(len(count)) * subsets).floor().long().clamp_max((subsets - 1).clamp_min(0)) + 1  # (B,) in [1, 2^k - 2]
    rank = present.long().cumsum(dim=1) - 1  # (B, M) position of each present modality among the present ones
    bits = ((chosen[:, None] >> rank.clamp_min(0)) & 1).bool() & present  # (B, M) the subset's members
    hidden = (draw(len(count)) < p) & (subsets > 0)  # (B,) samples shown a subset
    kept = torch.where(hidden[:, None], bits, present)  # (B, M)
    return {m: kept[:, i] for i, m in enumerate(modalities)}
