"""Blank inputs count as absent: a row whose dense input is one constant value (a silent clip, an image filled
with one grey level) carries no evidence, so the fusion treats it as that modality missing.

Without this, a wholly silent clip or a fully covered image reaches the encoder as an input it never saw as
"missing", and the gate can give it weight back (the audio gate rose from 0.09 to 0.18 at full silence on the
built-in digits). Rows that would be left with no modality keep their mask.
"""

from __future__ import annotations

import torch


def blank_rows(value: torch.Tensor | dict) -> torch.Tensor | None:
    """(B, ...) dense input -> (B,) bool, True where every entry of the row has the same value; None for dict
    inputs (text and pretrained towers' processor outputs), which are never blank."""
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        return None
    rows = value.reshape(value.shape[0], -1)  # (B, N)
    return rows.amax(dim=1) == rows.amin(dim=1)


def absent_if_blank(mask: dict[str, torch.Tensor], batch: dict, modalities: list[str]) -> dict[str, torch.Tensor]:
    """modality -> (B,) bool presence, with the blank rows of each modality turned off (never all of a row's)."""
    present = {m: mask[m].bool() for m in modalities}
    seen = {m: present[m] & ~blank if (blank := blank_rows(batch[m])) is not None else present[m] for m in modalities}
    left = torch.stack([seen[m] for m in modalities], dim=1).any(dim=1)  # (B,)
    return {m: seen[m] | (present[m] & ~left) for m in modalities}  # logic ops: ONNX Runtime has no bool Where
