"""Batch-dict helpers: move to a device, concatenate test batches, cut fixed-size batches for timing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def to_device(value: object, device: torch.device | str) -> object:
    """Moves every tensor inside a (nested) batch dict/list to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(item, device) for item in value)
    return value


def _concat(values: Sequence[object]) -> object:
    first = values[0]
    if isinstance(first, dict):
        return {key: _concat([value[key] for value in values]) for key in first}
    if isinstance(first, torch.Tensor):
        if first.dim() >= 2:  # pad the last dim (token count, waveform length) to the longest
            longest = max(value.shape[-1] for value in values)
            values = [F.pad(value, (0, longest - value.shape[-1])) for value in values]
        return torch.cat(list(values), dim=0)
    raise TypeError(f"cannot concatenate batch values of type {type(first).__name__}")


def concat_batches(batches: Sequence[dict]) -> dict:
    """One batch dict holding every sample of ``batches`` (ragged last dims zero-padded)."""
    if not batches:
        raise ValueError("no batches to concatenate")
    return _concat(list(batches))


def slice_batch(batch: object, start: int, stop: int) -> object:
    """Samples ``start:stop`` of a (nested) batch dict."""
    if isinstance(batch, dict):
        return {key: slice_batch(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    raise TypeError(f"cannot slice batch value of type {type(batch).__name__}")


def take_batch(full: dict, size: int) -> dict:
    """A batch of exactly ``size`` samples from ``full``, cycling through it if it holds fewer."""
    total = int(full["label"].shape[0])
    if total >= size:
        return slice_batch(full, 0, size)
    repeats = -(-size // total)
    return slice_batch(concat_batches([full] * repeats), 0, size)


def select_rows(batch: object, keep: torch.Tensor) -> object:
    """Samples of a (nested) batch dict where the boolean ``keep`` (B,) is True."""
    if isinstance(batch, dict):
        return {key: select_rows(value, keep) for key, value in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch[keep]
    raise TypeError(f"cannot index batch value of type {type(batch).__name__}")
