"""LightningDataModule over a manifest (or the built-in digits set): validation, splits, loaders."""

from __future__ import annotations

import csv
import logging
import random
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from fusion.data.builtin_digits import ensure_builtin_digits
from fusion.data.dataset import Collate, ManifestDataset, decode_media
from fusion.data.distributed_eval_sampler import with_eval_sampler
from fusion.data.manifest import SPLITS, ManifestError, ManifestRow, Problem, parse_manifest
from fusion.data.media import MediaError
from fusion.data.tokenizer import build_tokenizer
from fusion.errors import ConfigError

log = logging.getLogger(__name__)


class ManifestDataModule(L.LightningDataModule):
    """Validates a manifest once, before training, and serves train/val/test loaders of batch dicts.

    Args:
        manifest: CSV/JSONL manifest; None = the built-in digits set (generated on first use).
        modalities: use only these modality columns (None = all present in the manifest).
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        on_error: "raise" = one error listing every bad row; "skip" = skip them, report in the run folder.
        image_size: images are resized to image_size x image_size.
        image_channels: 1 (grayscale) or 3 (RGB).
        augment: random affine augmentation of training images.
        sample_rate: audio is resampled to this rate.
        audio_seconds: audio is centre-cropped or padded to this duration.
        text_model: local transformers directory for the tokenizer (None = built-in byte tokenizer).
        max_text_length: tokens per caption.
        val_fraction: share of train rows held out for validation when the manifest has no val rows.
        test_fraction: share of rows for test when the manifest has no split column.
        split_seed: seed of generated splits.
        cache: keep decoded media in memory (decoded once, during validation).
        builtin_size: (train, val, test) sizes of the built-in set.
    """

    def __init__(self, manifest: str | None = None, modalities: list[str] | None = None, batch_size: int = 64,
                 num_workers: int = 0, on_error: str = "raise", image_size: int = 32, image_channels: int = 1,
                 augment: bool = True, sample_rate: int = 8000, audio_seconds: float = 1.0,
                 text_model: str | None = None, max_text_length: int = 40, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, split_seed: int = 0, cache: bool = True,
                 builtin_size: tuple[int, int, int] = (3000, 500, 1000)):
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error must be 'raise' or 'skip', got '{on_error}'")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}")
        self.manifest = manifest
        self.modalities_arg = list(modalities) if modalities is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_error = on_error
        self.image_size = image_size
        self.image_channels = image_channels
        self.augment = augment
        self.sample_rate = sample_rate
        self.audio_samples = int(round(audio_seconds * sample_rate))
        self.text_model = text_model
        self.max_text_length = max_text_length
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.cache = cache
        self.builtin_size = tuple(builtin_size)
        self.datasets: dict[str, ManifestDataset] = {}
        self.skipped: list[Problem] = []
        self.classes: list[str] = []
        self.modalities: list[str] = []

    @property
    def manifest_path(self) -> Path:
        if self.manifest is None:
            return ensure_builtin_digits(n_train=self.builtin_size[0], n_val=self.builtin_size[1], n_test=self.builtin_size[2])
        return Path(self.manifest).expanduser()

    @property
    def spec(self) -> dict:
        """Plain description of the data that models are built from."""
        if not self.datasets:
            self.prepare()
        return {"modalities": list(self.modalities), "num_classes": len(self.classes), "classes": list(self.classes)}

    def prepare(self, run_dir: str | Path | None = None) -> None:
        """Parses and validates every row and media file; raises ManifestError or writes a skip report."""
        path = self.manifest_path
        rows, problems = parse_manifest(path, self.modalities_arg)
        if any("video" in row.media for row in rows) or any(problem.column == "video" for problem in problems):
            raise ManifestError(path, [Problem(0, "video", "classification recipes have no video tower: drop the "
                                       "column or choose the others with data.modalities=[image,audio,text]; "
                                       "talking-face videos train with recipe=sync data.video_dir=<folder>")])
        rows, media_problems, decoded = self._decode_all(rows)
        problems = sorted(problems + media_problems, key=lambda p: (p.row, p.column))
        if problems and self.on_error == "raise":
            raise ManifestError(path, problems)
        self.skipped = problems
        if problems and run_dir is not None:
            write_skip_report(Path(run_dir) / "skipped_rows.csv", problems)
        if problems:
            log.warning(f"skipped {len(problems)} problem(s) in '{path}'" + (f"; see {Path(run_dir) / 'skipped_rows.csv'}" if run_dir else ""))
        splits = self._assign_splits(rows, path)
        self.modalities = sorted({m for r in rows for m in r.media})
        self.classes = sort_labels({r.label for r in rows})
        class_index = {c: i for i, c in enumerate(self.classes)}
        for split in SPLITS:
            self.datasets[split] = ManifestDataset(
                splits[split], class_index, self.modalities, self._image_transform(train=split == "train"),
                self.image_channels, self.sample_rate, self.audio_samples, cache=self.cache, preloaded=decoded)
        self.tokenizer = build_tokenizer(self.text_model)
        self.collate = Collate(self.modalities, self.tokenizer, self.max_text_length,
                               (self.image_channels, self.image_size, self.image_size), self.audio_samples)

    def _decode_all(self, rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[Problem], dict]:
        """Decodes every media file once, so unreadable files are found before training starts."""
        good, problems, decoded = [], [], {}
        files = sum(1 for row in rows for m in row.media if m != "text")
        log.info("checking %d rows: decoding %d media files once", len(rows), files)
        start = last_report = time.perf_counter()
        for index, row in enumerate(rows):
            if time.perf_counter() - last_report > 5.0:
                last_report = time.perf_counter()
                log.info("  %d/%d rows checked (%.0f rows/s)", index, len(rows), index / (last_report - start))
            row_values, row_problems = {}, []
            for m, value in row.media.items():
                if m == "text":
                    continue
                try:
                    row_values[(row.row, m)] = decode_media(value, m, self.image_channels, self.sample_rate, self.audio_samples)
                except MediaError as err:
                    row_problems.append(Problem(row.row, m, err.reason, value))
            if row_problems:
                problems.extend(row_problems)
            else:
                good.append(row)
                if self.cache:
                    decoded.update(row_values)
        seconds = time.perf_counter() - start
        log.info("decoded %d files in %.1f s (%.0f files/s), %d problem(s)", files, seconds, files / max(seconds, 1e-9),
                 len(problems))
        return good, problems, decoded

    def _assign_splits(self, rows: list[ManifestRow], path: Path) -> dict[str, list[ManifestRow]]:
        rng = random.Random(self.split_seed)
        has_split = [r.split is not None for r in rows]
        if any(has_split) and not all(has_split):
            raise ManifestError(path, [Problem(r.row, "split", "empty split while other rows have one") for r in rows if r.split is None])
        splits: dict[str, list[ManifestRow]] = {s: [] for s in SPLITS}
        if not any(has_split):
            order = rows[:]
            rng.shuffle(order)
            n_test = int(round(len(order) * self.test_fraction))
            splits["test"] = order[:n_test]
            splits["train"] = order[n_test:]
        else:
            for r in rows:
                splits[r.split].append(r)
        if not splits["val"] and splits["train"]:
            order = splits["train"][:]
            rng.shuffle(order)
            n_val = max(1, int(round(len(order) * self.val_fraction)))
            splits["val"], splits["train"] = sorted(order[:n_val], key=lambda r: r.row), sorted(order[n_val:], key=lambda r: r.row)
        empty = [s for s in ("train", "test") if not splits[s]]
        if empty:
            raise ManifestError(path, [Problem(0, "split", f"no usable rows in split '{s}'") for s in empty])
        return splits

    def _image_transform(self, train: bool) -> transforms.Compose:
        steps = [transforms.Resize((self.image_size, self.image_size))]
        if train and self.augment:
            steps.append(transforms.RandomAffine(degrees=8, translate=(0.06, 0.06), scale=(0.92, 1.08)))
        steps += [transforms.ToTensor(), transforms.Normalize([0.5] * self.image_channels, [0.5] * self.image_channels)]
        return transforms.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.prepare()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, collate_fn=self.collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.split_seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return with_eval_sampler(self._loader("val", shuffle=False))  # under DDP: every row once

    def test_dataloader(self) -> DataLoader:
        return with_eval_sampler(self._loader("test", shuffle=False))


def sort_labels(labels: set[str]) -> list[str]:
    """Integer labels sort numerically, anything else alphabetically."""
    if all(label.lstrip("-").isdecimal() for label in labels):  # isdigit() would admit "²", which int() rejects
        return sorted(labels, key=int)
    return sorted(labels)


def write_skip_report(path: Path, problems: list[Problem]) -> None:
    """Writes skipped rows (row, column, path, message) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "column", "path", "message"])
        for p in problems:
            writer.writerow([p.row, p.column, p.path or "", p.message])
