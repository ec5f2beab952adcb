"""Symmetric InfoNCE (CLIP) loss over every pair of present modalities.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021. For a
pair (a, b) with L2-normalised embeddings z_a, z_b (N, D) the logits are ``s * z_a @ z_b.T`` with a
learnable scale s = exp(t), t initialised at ln(1 / 0.07) and s clamped at 100; the loss is the mean of
the cross-entropies of rows (a -> b) and columns (b -> a) against the diagonal. Rows where either
modality is missing are dropped from that pair (as queries and as negatives). Under DDP the embeddings are
gathered from every rank with gradients, so negatives come from the global batch.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from fusion.alignment.gather import (
    all_gather_no_grad,
    all_gather_with_grad,
    is_distributed,
    local_row_offset,
)

TOTAL_KEY = "contrastive_loss"


def pair_loss_key(a: str, b: str) -> str:
    """Name of the loss term of modality pair (a, b), e.g. ``audio_image_loss``."""
    return f"{a}_{b}_loss"


class ContrastiveLoss(nn.Module):
    """CLIP loss with a learnable, clamped logit scale, averaged over modality pairs.

    Args:
        init_temperature: initial temperature; the logit scale starts at ln(1 / init_temperature).
        max_logit_scale: the scale exp(t) used in the logits never exceeds this value.
        learnable_scale: learn t (else it stays fixed).
        gather: under DDP, use negatives from every rank (``all_gather_with_grad``).
        local_loss: under DDP, compute only this rank's rows against the gathered columns (cost B_r x N
            instead of N x N); the returned loss is this rank's share, so its mean over ranks equals the
            global loss and DDP's gradient averaging gives the single-process gradient.
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learnable_scale: bool = True,
        gather: bool = True,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        if init_temperature <= 0 or max_logit_scale <= 0:
            raise ValueError(
                f"init_temperature ({init_temperature}) and max_logit_scale ({max_logit_scale}) must be > 0"
            )
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / init_temperature)), requires_grad=learnable_scale
        )
        self.max_logit_scale = max_logit_scale
        self.gather = gather
        self.local_loss = local_loss

    def scale(self) -> torch.Tensor:
        """The multiplier of the cosine logits, exp(t) clamped at ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamps the parameter itself (call after an optimiser step, so t cannot drift past the cap)."""
        self.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def forward(
        self, embeddings: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Computes every pair's loss and their mean.

        Args:
            embeddings: modality -> (B, D) L2-normalised embeddings (at least two modalities).
            mask: modality -> (B,) bool, True where the modality is present; missing keys = all present.

        Returns:
            ``{"<a>_<b>_loss": ..., "contrastive_loss": mean over pairs with a present row}``; pairs without
            any row where both modalities are present (in the global batch) are left out.
        """
        modalities = sorted(embeddings)
        if len(modalities) < 2:
            raise ValueError(f"contrastive loss needs at least two modalities, got {modalities}")
        local_size = embeddings[modalities[0]].shape[0]
        device = embeddings[modalities[0]].device
        mask = mask or {}
        local_mask = {
            m: mask.get(m, torch.ones(local_size, dtype=torch.bool, device=device)).bool() for m in modalities
        }
        world = torch.distributed.get_world_size() if self._gathering() else 1
        if self._gathering():
            columns = {m: all_gather_with_grad(embeddings[m]) for m in modalities}  # (N, D)
            column_mask = {m: all_gather_no_grad(local_mask[m].to(torch.uint8)).bool() for m in modalities}
            offset = local_row_offset(local_size, device)
        else:
            columns, column_mask, offset = embeddings, local_mask, 0

        scale = self.scale()
        terms: dict[str, torch.Tensor] = {}
        for a, b in itertools.combinations(modalities, 2):
            valid = column_mask[a] & column_mask[b]  # (N,)
            count = int(valid.sum())
            if count == 0:
                continue
            cols_a, cols_b = columns[a][valid], columns[b][valid]  # (n, D)
            if self.local_loss and world > 1:
                valid_local = valid[offset : offset + local_size]  # (B,)
                rows_a, rows_b = embeddings[a][valid_local], embeddings[b][valid_local]  # (m, D)
                targets = (valid.cumsum(0) - 1)[offset : offset + local_size][valid_local]  # (m,)
                share = world / count
            else:
                rows_a, rows_b = cols_a, cols_b
                targets = torch.arange(count, device=device)
                share = 1.0 / count
            logits_ab = scale * rows_a @ cols_b.T  # (m, n)
            logits_ba = scale * rows_b @ cols_a.T  # (m, n)
            summed = F.cross_entropy(logits_ab, targets, reduction="sum") + F.cross_entropy(
                logits_ba, targets, reduction="sum"
            )
            terms[pair_loss_key(a, b)] = 0.5 * share * summed
        if terms:
            terms[TOTAL_KEY] = torch.stack(list(terms.values())).mean()
        else:
            terms[TOTAL_KEY] = scale * 0.0
        return terms

    def _gathering(self) -> bool:
        return self.gather and is_distributed()
