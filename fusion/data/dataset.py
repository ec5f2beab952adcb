"""A map-style dataset over validated manifest rows (decoding in DataLoader workers), and the collate that builds
the batch dict."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from fusion.data.decoder import MediaDecoder
from fusion.data.manifest import ManifestRow
from fusion.data.media import MediaError
from fusion.errors import UserError


def decode_media(value: str, modality: str, image_channels: int, sample_rate: int, audio_samples: int,
                 pad_audio: bool = True) -> object:
    """Decodes one manifest cell: image path -> PIL image, audio path -> (L,) waveform (exactly `audio_samples`
    long, or with pad_audio=False at most that long), text -> itself."""
    if modality == "text":
        return value
    if modality not in ("image", "audio"):
        raise ValueError(f"modality '{modality}' is not supported by the classification data")
    return MediaDecoder(image_channels, sample_rate, audio_samples, pad_audio).load(value, modality)


class RowDecodeError(UserError, ValueError):
    """A file failed to decode while training (validation checked only its header); names row, column, file."""


class ManifestDataset(Dataset):
    """Examples of one split, decoded on demand (in DataLoader workers). Items are dicts: modality -> value
    (transformed image (C, H, W), (L,) waveform, (T, h, w) uint8 video, text: tokens {name: (T,)} with a
    tokenizer, else the string), plus `label` and `row`.

    Args:
        rows: validated rows of this split.
        class_index: label string -> class id.
        modalities: the modalities of the dataset (sorted); a row may miss some of them.
        image_transform: PIL image -> (C, H, W) tensor (what follows the decoder's resize: augmentation,
            normalisation).
        image_channels: 1 (grayscale) or 3 (RGB).
        sample_rate: audio is resampled to this rate.
        audio_samples: audio is centre-cropped or padded to this many samples.
        cache: keep decoded media in this process's memory after first use (small sets, e.g. prediction).
        preloaded: already decoded media keyed by (manifest row number, modality), e.g. from validation.
        pad_audio: pad audio to audio_samples (False: variable length, only cropped; the collate pads a batch).
        decoder: decodes files, with the resize and the disk cache (None = one built from the settings above).
        tokenizer: (texts, max_length) -> {"input_ids", "attention_mask"}: text is tokenised per item, in the
            worker (None = items keep the string and the collate tokenises).
        max_text_length: token budget per caption.
    """

    def __init__(self, rows: list[ManifestRow], class_index: dict[str, int], modalities: list[str],
                 image_transform: Callable, image_channels: int, sample_rate: int, audio_samples: int,
                 cache: bool = True, preloaded: dict[tuple[int, str], object] | None = None, pad_audio: bool = True,
                 decoder: MediaDecoder | None = None, tokenizer: Callable | None = None, max_text_length: int = 40):
        self.rows = rows
        self.class_index = class_index
        self.modalities = modalities
        self.image_transform = image_transform
        self.decoder = decoder or MediaDecoder(image_channels, sample_rate, audio_samples, pad_audio)
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self.cache: dict[tuple[int, str], object] | None = dict(preloaded or {}) if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def decode(self, index: int, modality: str) -> object:
        """The decoded (untransformed) media of one row: PIL image, (L,) waveform, (T, h, w) frames or the text."""
        row = self.rows[index]
        if modality == "text":
            return row.media[modality]
        key = (row.row, modality)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        try:
            value = self.decoder.load(row.media[modality], modality)
        except MediaError as err:
            raise RowDecodeError(f"row {row.row}, column '{modality}', file '{err.path}': {err.reason} (found while "
                                 "loading; data.validate=decode decodes every file before training)") from None
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
            if m == "image":
                value = self.image_transform(value)  # (C, H, W)
            elif m == "text" and self.tokenizer is not None:
                value = {k: v[0] for k, v in self.tokenizer([value], self.max_text_length).items()}  # {name: (T,)}
            item[m] = value
        return item


class Collate:
    """Stacks items into the batch dict; absent modalities become zero placeholders with mask False.

    Args:
        modalities: the dataset's modalities.
        tokenizer: list of strings -> {"input_ids", "attention_mask"} (B, T) (for items holding strings, and
            the placeholder of absent text).
        max_text_length: token budget per caption.
        image_shape: (C, H, W) of transformed images.
        audio_samples: waveform length (of the placeholder only, with an audio_batcher).
        audio_batcher: list of (L_i,) waveforms -> the audio batch value (e.g. AudioBatcher: padded values or
            features with an attention mask); None = stack fixed-length waveforms into (B, L).
        video_shape: (T, h, w) of decoded video (the placeholder's shape).
    """

    def __init__(self, modalities: list[str], tokenizer: Callable, max_text_length: int,
                 image_shape: tuple[int, int, int], audio_samples: int, audio_batcher: Callable | None = None,
                 video_shape: tuple[int, int, int] | None = None):
        self.modalities = modalities
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self.image_shape = image_shape
        self.audio_samples = audio_samples
        self.audio_batcher = audio_batcher
        self.video_shape = video_shape

    def text(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Tokens (B, T) of the items' text: stacked when the workers tokenised it, else tokenised here."""
        values = [it.get("text", "") for it in items]
        if not any(isinstance(v, dict) for v in values):
            return self.tokenizer(values, self.max_text_length)
        blank = {k: v[0] for k, v in self.tokenizer([""], self.max_text_length).items()}
        values = [v if isinstance(v, dict) else blank if v == "" else
                  {k: t[0] for k, t in self.tokenizer([v], self.max_text_length).items()} for v in values]
        return {k: torch.stack([v[k] for v in values]) for k in values[0]}  # {name: (B, T)}

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {"mask": {}}
        for m in self.modalities:
            present = torch.tensor([m in it for it in items])  # (B,)
            batch["mask"][m] = present
            if m == "text":
                batch[m] = self.text(items)
            elif m == "audio" and self.audio_batcher is not None:
                blank = torch.zeros(self.audio_samples)
                batch[m] = self.audio_batcher([it[m] if m in it else blank for it in items])
            elif m == "video":
                blank = torch.zeros(self.video_shape, dtype=torch.uint8)
                batch[m] = torch.stack([it[m] if m in it else blank for it in items])  # (B, T, h, w)
            else:
                blank = torch.zeros(self.image_shape if m == "image" else (self.audio_samples,))
                batch[m] = torch.stack([it[m] if m in it else blank for it in items])
        batch["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)  # (B,)
        batch["row"] = torch.tensor([it["row"] for it in items], dtype=torch.long)  # (B,) manifest row numbers
        return batch


class AudioBatcher:
    """Variable-length waveforms -> {"input_values" or "input_features", "attention_mask"}: a transformers
    feature extractor's output (its normalisation, features and padding), or zero padding to the longest clip.

    Args:
        sample_rate: rate of the waveforms.
        feature_extractor: transformers feature extractor folder / hub id; None = only pad.
        padding: the extractor's padding ("longest", or "max_length" for fixed windows such as Whisper's).
        options: from_pretrained keyword arguments (local_files_only, ...).
    """

    def __init__(self, sample_rate: int, feature_extractor: str | None = None, padding: str = "longest",
                 options: dict | None = None):
        self.sample_rate, self.padding = sample_rate, padding
        self.extractor = None
        if feature_extractor is not None:
            from transformers import AutoFeatureExtractor

            self.extractor = AutoFeatureExtractor.from_pretrained(feature_extractor, **(options or {}))

    def __call__(self, waves: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([w.numel() for w in waves])  # (B,)
        if self.extractor is None:
            values = torch.zeros(len(waves), int(lengths.max()))  # (B, L)
            for i, w in enumerate(waves):
                values[i, : w.numel()] = w
            mask = (torch.arange(values.shape[1])[None, :] < lengths[:, None]).long()  # (B, L)
            return {"input_values": values, "attention_mask": mask}
        out = self.extractor([w.numpy() for w in waves], sampling_rate=self.sample_rate, padding=self.padding,
                             return_attention_mask=True, return_tensors="pt")
        batch = {k: out[k].float() for k in ("input_values", "input_features") if k in out}
        if "attention_mask" in out:
            batch["attention_mask"] = out["attention_mask"].long()
        return batch
