"""FusionModel: encoders + fusion, a plain nn.Module mapping a batch dict to logits."""

from __future__ import annotations

import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.fusions.base import Fusion, FusionResult
from fusion.fusions.blank_inputs import absent_if_blank
from fusion.fusions.modality_dropout import modality_dropout


class FusionModel(nn.Module):
    """Encodes each modality of a batch and fuses the features.

    Args:
        encoders: modality -> encoder mapping that modality's batch value to (B, D); must expose `out_dim`.
        fusion: a Fusion built for {modality: encoder.out_dim}.
        modality_dropout: share of training samples shown only a random proper subset of their modalities.
        single_modality_fallback: a sample with one modality present gets that modality's own decision
            (log-probabilities of its head, which reads that modality only) rather than the fused layers' answer
            from one input.
        blank_as_absent: a row whose dense input is one constant value (a silent clip) counts as that modality
            missing (fusion/fusions/blank_inputs.py).
        own_inputs: what each modality's own decision learns from in training. "seen": the rows the fusion
            was shown, as they were shown (corrupted rows are then left out of the own loss by the task);
            "clean": every row where the data has the modality, on its input before training corruption and
            before modality dropout (`FusionResult.own_logits`; the encoders of corruptible modalities run twice).
    """

    def __init__(self, encoders: dict[str, nn.Module], fusion: Fusion, modality_dropout: float = 0.0,
                 single_modality_fallback: bool = False, blank_as_absent: bool = False, own_inputs: str = "seen"):
        super().__init__()
        if own_inputs not in ("seen", "clean"):
            raise ConfigError(f"model.unimodal_loss_inputs must be 'seen' or 'clean', got {own_inputs!r}")
        self.own_inputs = own_inputs
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.modality_dropout = modality_dropout
        self.single_modality_fallback = single_modality_fallback
        self.blank_as_absent = blank_as_absent
        lacking = [m for m, e in encoders.items()
                   if self.needs_tokens and not (hasattr(e, "forward_tokens") and getattr(e, "gives_tokens", True))]
        if lacking:
            raise ConfigError(f"{type(fusion).__name__} fuses tokens, but the {lacking} encoder gives none (the "
                              "built-in image tower gives them with model.encoders.image.pool=mean)")

    @property
    def needs_tokens(self) -> bool:
        """True for fusions that attend over tokens (fusion/fusions/cross_attention.py) rather than pooled features."""
        return bool(getattr(self.fusion, "needs_tokens", False))

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """modality -> pooled features (B, D)."""
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def encode_tokens(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """modality -> tokens (B, T, D), and modality -> valid tokens (B, T) bool (text: its attention mask)."""
        tokens = {m: self.encoders[m].forward_tokens(batch[m]) for m in self.modalities}
        valid = {m: batch[m]["attention_mask"].bool() if isinstance(batch[m], dict) and "attention_mask" in batch[m]
                 else torch.ones(tokens[m].shape[:2], dtype=torch.bool, device=tokens[m].device) for m in self.modalities}
        return tokens, valid

    def forward_with_details(self, batch: dict) -> FusionResult:
        present = {m: batch["mask"][m] for m in self.modalities}
        mask = absent_if_blank(present, batch, self.modalities) if self.blank_as_absent else present
        if self.training and self.modality_dropout > 0:
            mask = modality_dropout(mask, self.modality_dropout)
        features = None
        if self.needs_tokens:
            tokens, valid = self.encode_tokens(batch)
            result = self.fusion.fuse(tokens, mask, valid)
        else:
            features = self.encode(batch)
            result = self.fusion.fuse(features, mask)
        result.mask = mask  # what the fusion saw: losses and logged gate means must use this, not the batch's
        if self.training and self.own_inputs == "clean":
            result.own_logits, result.own_mask = self.own_decisions(batch, present, features)
        if self.single_modality_fallback and result.unimodal_logits:
            result.logits = single_modality_decisions(result.logits, result.unimodal_logits, mask)
        return result

    def own_decisions(self, batch: dict, present: dict[str, torch.Tensor],
                      features: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each modality's own decision (B, K) on its clean input (``batch["clean"]``, from CorruptionAugment) for
        every row where the data has it (``present``: modality -> (B,) bool, before modality dropout), and those
        rows. ``features``: the pass's pooled features, reused for the modalities that were not corrupted."""
        clean = batch.get("clean", {})
        clean_batch = {**batch, **clean}
        own_mask = absent_if_blank(present, clean_batch, self.modalities) if self.blank_as_absent else present
        if features is None:  # token fusions: encode the clean batch again
            tokens, valid = self.encode_tokens(clean_batch)
            return self.fusion.fuse(tokens, own_mask, valid).unimodal_logits, own_mask
        own_features = {m: self.encoders[m](clean[m]) if m in clean else features[m] for m in self.modalities}
        return self.fusion.fuse(own_features, own_mask).unimodal_logits, own_mask

    def forward(self, batch: dict) -> torch.Tensor:
        """Batch dict -> logits (B, K)."""
        return self.forward_with_details(batch).logits


def single_modality_decisions(logits: torch.Tensor, unimodal_logits: dict[str, torch.Tensor],
                              mask: dict[str, torch.Tensor]) -> torch.Tensor:
    """`logits` (B, K), with the rows that have exactly one modality present replaced by that modality's
    log-probabilities (its head in ``unimodal_logits``: modality -> (B, K)); ``mask``: modality -> (B,) bool."""
    modalities = sorted(unimodal_logits)
    present = torch.stack([mask[m].bool() for m in modalities], dim=1)  # (B, M)
    logp = torch.stack([torch.log_softmax(unimodal_logits[m], dim=1) for m in modalities], dim=1)  # (B, M, K)
    alone = torch.where(present.unsqueeze(-1), logp, torch.zeros_like(logp)).sum(dim=1).to(logits.dtype)  # (B, K)
    return torch.where((present.sum(dim=1) == 1).unsqueeze(-1), alone, logits)
