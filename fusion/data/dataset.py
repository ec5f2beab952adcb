"""A map-style dataset over validated manifest rows, and the collate that builds the batch dict."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from fusion.data.manifest import ManifestRow
from fusion.data.media import fit_length, load_audio, load_image


def decode_media(value: str, modality: str, image_channels: int, sample_rate: int, audio_samples: int) -> object:
    """Decodes one manifest cell: image path -> PIL image, audio path -> (L,) waveform, text -> itself."""
    if modality == "image":
        return load_image(value, image_channels)
    if modality == "audio":
        return fit_length(load_audio(value, sample_rate), audio_samples)
    if modality == "text":
        return value
    raise ValueError(f"modality '{modality}' is not supported by the classification data")


class ManifestDataset(Dataset):
    """Examples of one split. Items are dicts: modality -> decoded value, plus `label` and `present`.

    Args:
        rows: validated rows of this split.
        class_index: label string -> class id.
        modalities: the modalities of the dataset (sorted); a row may miss some of them.
        image_transform: PIL image -> (C, H, W) tensor.
        image_channels: 1 (grayscale) or 3 (RGB).
        sample_rate: audio is resampled to this rate.
        audio_samples: audio is centre-cropped or padded to this many samples.
        cache: keep decoded media in memory after first use (the transform still runs every time).
        preloaded: already decoded media keyed by (manifest row number, modality), e.g. from validation.
    """

    def __init__(self, rows: list[ManifestRow], class_index: dict[str, int], modalities: list[str],
                 image_transform: Callable, image_channels: int, sample_rate: int, audio_samples: int,
                 cache: bool = True, preloaded: dict[tuple[int, str], object] | None = None):
        self.rows = rows
        self.class_index = class_index
        self.modalities = modalities
        self.image_transform = image_transform
        self.image_channels = image_channels
        self.sample_rate = sample_rate
        self.audio_samples = audio_samples
        self.cache: dict[tuple[int, str], object] | None = dict(preloaded or {}) if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def decode(self, index: int, modality: str) -> object:
        """The decoded (untransformed) media of one row: PIL image, (L,) waveform or the text."""
        row = self.rows[index]
        key = (row.row, modality)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        value = decode_media(row.media[modality], modality, self.image_channels, self.sample_rate, self.audio_samples)
        if self.cache is not None:
            self.cache[key] = value
        return value

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        item: dict = {"label": self.class_index[row.label], "row": row.row}
        for m in self.modalities:
            if m not in row.media:
                continue
            value = self.decode(index, m)
            item[m] = self.image_transform(value) if m == "image" else value
        return item


class Collate:
    """Stacks items into the batch dict; absent modalities become zero placeholders with mask False.

    Args:
        modalities: the dataset's modalities.
        tokenizer: list of strings -> {"input_ids", "attention_mask"} (B, T).
        max_text_length: token budget per caption.
        image_shape: (C, H, W) of transformed images.
        audio_samples: waveform length.
    """

    def __init__(self, modalities: list[str], tokenizer: Callable, max_text_length: int,
                 image_shape: tuple[int, int, int], audio_samples: int):
        self.modalities = modalities
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self.image_shape = image_shape
        self.audio_samples = audio_samples

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {"mask": {}}
        for m in self.modalities:
            present = torch.tensor([m in it for it in items])  # (B,)
            batch["mask"][m] = present
            if m == "text":
                batch[m] = self.tokenizer([it.get(m, "") for it in items], self.max_text_length)
            else:
                blank = torch.zeros(self.image_shape if m == "image" else (self.audio_samples,))
                batch[m] = torch.stack([it[m] if m in it else blank for it in items])
        batch["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)  # (B,)
        batch["row"] = torch.tensor([it["row"] for it in items], dtype=torch.long)  # (B,) manifest row numbers
        return batch
