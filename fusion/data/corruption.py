"""Corruptions of one modality of a batch: training augmentation for the gate, and the robustness report's probes.

Every corruption takes a per-sample strength ``level`` (B,) in [0, 1] (0 = clean) and works on any device:
- ``noise``: Gaussian noise with standard deviation ``level`` times the sample's own (dense inputs);
  attended tokens replaced by tokens of the batch with probability ``level`` (text).
- ``occlusion``: a box covering ``level`` of the image (of every video frame) filled with a random grey
  level, or a silent segment of ``level`` of the waveform.
- ``impulse``: ``level`` of the entries set to the sample's minimum or maximum (salt and pepper, clicks);
  attended tokens deleted from the attention mask with probability ``level`` (the first one stays).
Training uses ``noise`` and ``occlusion`` by default, so ``impulse`` measures noise a model never saw.
A pretrained tower's dict input (``input_values``, ``input_features``, ``pixel_values`` plus masks) has its
dense tensor corrupted like a plain one; a dict with ``input_ids`` is text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fusion.errors import ConfigError

Value = torch.Tensor | dict[str, torch.Tensor]
DENSE_KEYS = ("input_values", "input_features", "pixel_values")  # the signal of a pretrained tower's dict input


def _on_dense(corruption: Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], torch.Tensor]):
    """Lets a corruption of dense tensors take a pretrained tower's dict input (its signal key corrupted)."""

    def apply(value: Value, level: torch.Tensor, generator: torch.Generator | None = None) -> Value:
        if not isinstance(value, dict):
            return corruption(value, level, generator)
        key = next((k for k in DENSE_KEYS if k in value), None)
        if key is None:
            raise ConfigError(f"cannot corrupt an input with keys {sorted(value)} (expected one of {DENSE_KEYS})")
        return {**value, key: corruption(value[key], level, generator)}

    apply.__name__, apply.__doc__ = corruption.__name__, corruption.__doc__
    return apply


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device="cpu" if generator else device).to(device)


def _per_sample(level: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ...) broadcastable against ``value``."""
    return level.to(value.device, torch.float32).view(-1, *[1] * (value.dim() - 1))


def _is_text(value: Value) -> bool:
    return isinstance(value, dict) and "input_ids" in value


def noise(value: Value, level: torch.Tensor, generator: torch.Generator | None = None) -> Value:
    if _is_text(value):  # {"input_ids": (B, T), "attention_mask": (B, T)}
        input_ids, attended = value["input_ids"], value["attention_mask"].bool()
        pool = input_ids[attended]  # (K,)
        replace = (_rand(input_ids.shape, generator, input_ids.device) < _per_sample(level, input_ids)) & attended
        picks = (_rand(input_ids.shape, generator, input_ids.device) * len(pool)).long().clamp_max(len(pool) - 1)
        return {**value, "input_ids": torch.where(replace, pool[picks], input_ids)}
    return _dense_noise(value, level, generator)


@_on_dense
def _dense_noise(value: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    dims = tuple(range(1, value.dim()))
    scale = value.float().std(dim=dims, keepdim=True)  # (B, 1, ...): silent (missing) rows stay silent
    gaussian = torch.randn(value.shape, generator=generator, device="cpu" if generator else value.device).to(value.device)
    return (value.float() + gaussian * scale * _per_sample(level, value)).to(value.dtype)


def occlusion(value: Value, level: torch.Tensor, generator: torch.Generator | None = None) -> Value:
    if _is_text(value):
        raise ConfigError("corruption 'occlusion' applies to image, audio and video, not text")
    return _dense_occlusion(value, level, generator)


@_on_dense
def _dense_occlusion(value: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    batch, device = value.shape[0], value.device
    spatial = value.shape[-2:] if value.dim() >= 4 else value.shape[-1:]  # (H, W) of images / frames, (L,) of audio
    side = level.to(device, torch.float32).clamp(0, 1) ** (1 / len(spatial))  # (B,) share of each axis
    inside = torch.ones((batch, *spatial), dtype=torch.bool, device=device)  # (B, *S)
    for axis, size in enumerate(spatial):
        length = (side * size).round()  # (B,)
        start = (_rand((batch,), generator, device) * (size - length + 1)).floor()  # (B,)
        position = torch.arange(size, device=device)  # (S_axis,)
        along = (position >= start[:, None]) & (position < (start + length)[:, None])  # (B, S_axis)
        shape = [batch] + [1] * len(spatial)
        shape[axis + 1] = size
        inside = inside & along.view(shape)
    inside = inside.view(batch, *[1] * (value.dim() - 1 - len(spatial)), *spatial)  # broadcast over channels / frames
    if len(spatial) == 1:
        fill = torch.zeros((), dtype=value.dtype, device=device)  # silence
    else:
        dims = tuple(range(1, value.dim()))
        low, high = value.amin(dim=dims, keepdim=True), value.amax(dim=dims, keepdim=True)  # (B, 1, ...)
        fill = low + (high - low) * _rand((batch,), generator, device).view_as(low).to(value.dtype)
    return torch.where(inside, fill, value)


def impulse(value: Value, level: torch.Tensor, generator: torch.Generator | None = None) -> Value:
    if _is_text(value):
        attention = value["attention_mask"]
        first = attention.bool() & (attention.long().cumsum(dim=1) == 1)  # (B, T) the first attended token
        drop = (_rand(attention.shape, generator, attention.device) < _per_sample(level, attention)) & ~first
        return {**value, "attention_mask": attention.masked_fill(drop, 0)}
    return _dense_impulse(value, level, generator)


@_on_dense
def _dense_impulse(value: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    dims = tuple(range(1, value.dim()))
    low, high = value.amin(dim=dims, keepdim=True), value.amax(dim=dims, keepdim=True)  # (B, 1, ...)
    hit = _rand(value.shape, generator, value.device) < _per_sample(level, value)
    salt = _rand(value.shape, generator, value.device) < 0.5
    return torch.where(hit, torch.where(salt, high, low), value)


CORRUPTIONS: dict[str, Callable[[Value, torch.Tensor, torch.Generator | None], Value]] = {
    "noise": noise, "occlusion": occlusion, "impulse": impulse}


def corrupt(batch: dict, modality: str, kind: str, level: float | torch.Tensor,
            generator: torch.Generator | None = None) -> dict:
    """Copy of ``batch`` with ``modality`` corrupted by ``kind`` at ``level`` (a float, or (B,) per sample)."""
    if kind not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {kind!r}; choose from {sorted(CORRUPTIONS)}")
    if modality not in batch or modality not in batch["mask"]:
        raise KeyError(f"modality {modality!r} not in batch (has {sorted(batch['mask'])})")
    rows = int(batch["label"].shape[0])
    level = torch.as_tensor(level, dtype=torch.float32)
    if level.dim() == 0:
        if float(level) < 0:
            raise ValueError(f"corruption level must be >= 0, got {float(level)}")
        level = level.expand(rows)
    return {**batch, modality: CORRUPTIONS[kind](batch[modality], level, generator)}


@dataclass
class CorruptionAugment:
    """Training augmentation: a share of the samples get one present modality corrupted.

    Each chosen sample gets one of its present modalities (uniformly) corrupted by one of that modality's
    kinds at a level drawn uniformly from [0, ``max_level``]; the others stay clean, so the gate learns to
    move its weight away from the corrupted one.

    Attributes:
        p: share of training samples that get a corrupted modality (0 turns the augmentation off).
        max_level: the strongest corruption drawn.
        kinds: modality -> corruption kinds to draw from (see CORRUPTIONS); a modality not listed is left clean.
    """

    p: float = 0.0
    max_level: float = 1.0
    kinds: dict[str, list[str]] = field(default_factory=lambda: {
        "image": ["noise", "occlusion"], "audio": ["noise", "occlusion"], "video": ["noise", "occlusion"],
        "text": ["noise"]})

    def __post_init__(self):
        if not 0 <= self.p <= 1:
            raise ConfigError(f"model.corruption.p must be in [0, 1], got {self.p}")
        if self.max_level < 0:
            raise ConfigError(f"model.corruption.max_level must be >= 0, got {self.max_level}")
        for modality, kinds in self.kinds.items():
            unknown = [kind for kind in kinds if kind not in CORRUPTIONS]
            if unknown:
                raise ConfigError(f"model.corruption.kinds.{modality}: unknown {unknown}; choose from {sorted(CORRUPTIONS)}")
            if modality == "text" and "occlusion" in kinds:
                raise ConfigError("model.corruption.kinds.text: 'occlusion' applies to image, audio and video")

    def __call__(self, batch: dict) -> dict:
        """Returns a corrupted copy of ``batch`` (B rows; masks and labels unchanged) with ``"corrupted"``:
        modality -> (B,) bool, the rows whose modality was corrupted (`classification_loss` keeps them out of
        that modality's own loss), and ``"clean"``: modality -> its input before corruption."""
        modalities = [m for m in sorted(batch["mask"]) if self.kinds.get(m)]
        if self.p <= 0 or not modalities:
            return batch
        present = torch.stack([batch["mask"][m].bool() for m in modalities], dim=1)  # (B, M)
        device = present.device
        chosen = _rand((present.shape[0],), None, device) < self.p  # (B,)
        target = (_rand(present.shape, None, device) * present).argmax(dim=1)  # (B,) a random present modality
        levels = _rand((present.shape[0],), None, device) * self.max_level  # (B,)
        clean = {m: batch[m] for m in modalities}
        corrupted = {}
        for i, m in enumerate(modalities):
            rows = chosen & present[:, i] & (target == i)  # (B,)
            kinds = self.kinds[m]
            pick = (_rand((present.shape[0],), None, device) * len(kinds)).long().clamp_max(len(kinds) - 1)  # (B,)
            for k, kind in enumerate(kinds):
                batch = corrupt(batch, m, kind, levels * (rows & (pick == k)))
            corrupted[m] = rows
        return {**batch, "corrupted": corrupted, "clean": clean}
