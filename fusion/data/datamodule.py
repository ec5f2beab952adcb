"""LightningDataModule over a manifest (or the built-in digits set): validation, splits, loaders.

Validation is up front and complete (every bad row at once) but reads only headers by default, in parallel;
files are decoded in DataLoader workers, each process only the rows of its own share, with decoded values kept
in an on-disk cache (fusion/data/disk_cache.py) instead of memory.
"""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torchvision import transforms

from fusion.data.builtin_digits import ensure_builtin_digits
from fusion.data.dataset import AudioBatcher, Collate, ManifestDataset
from fusion.data.decoder import MediaDecoder
from fusion.data.disk_cache import DiskCache, default_cache_dir
from fusion.data.distributed_eval_sampler import with_eval_sampler
from fusion.data.manifest import SPLITS, ManifestError, Problem, iter_manifest
from fusion.data.row_table import RowTable
from fusion.data.tokenizer import build_tokenizer
from fusion.data.validation import MODES, usable_cpus, validate_media
from fusion.encoders.preprocessing import (
    AudioPreprocessing,
    ImagePreprocessing,
    Preprocessing,
    TextPreprocessing,
)
from fusion.encoders.towers import encoder_preprocessing
from fusion.errors import ConfigError

log = logging.getLogger(__name__)


class ManifestDataModule(L.LightningDataModule):
    """Validates a manifest once, before training, and serves train/val/test loaders of batch dicts.

    Args:
        manifest: CSV/JSONL manifest; None = the built-in digits set (generated on first use).
        modalities: use only these modality columns (None = all present in the manifest).
        batch_size: examples per batch.
        num_workers: DataLoader worker processes per loader (None = `default_num_workers`: the usable CPUs of
            this process's share of the machine, less one for the training loop, at most 12).
        validate: "header" = check every file's header and completeness before training (fast, parallel);
            "decode" = decode every file before training (finds bad samples too; fills the disk cache).
        on_error: "raise" = one error listing every bad row; "skip" = skip them, report in the run folder.
        towers: the model's encoder configs (`model.encoders`: configs or tower names); the preprocessing of
            each modality comes from its tower (size, crop, mean/std, channels, sample rate, features,
            tokenizer). None = the built-in towers' settings.
        image_size: images are resized to image_size x image_size (None = the image tower's).
        image_channels: 1 (grayscale) or 3 (RGB) (None = the image tower's; must agree with it).
        augment: random affine augmentation of training images.
        sample_rate: audio is resampled to this rate (None = the audio tower's; must agree with it).
        audio_seconds: audio is centre-cropped or padded to this duration; for variable-length towers
            (pretrained audio) the longest clip kept, batches are padded with an attention mask.
        text_model: transformers directory for the tokenizer (None = the text tower's, built-in: bytes).
        max_text_length: tokens per caption.
        val_fraction: share of train rows held out for validation when the manifest has no val rows.
        test_fraction: share of rows for test when the manifest has no split column.
        split_seed: seed of generated splits.
        cache: "disk" = keep decoded, resized media in an on-disk cache shared by processes and runs
            (memory-mapped; keyed by file content and preprocessing); "none" = decode every time. (true/false
            are read as disk/none.)
        cache_dir: the disk cache's folder (None = $FUSION_HOME/cache/decoded).
        pin_memory: page-locked batches for fast, non-blocking copies to the GPU (None = when CUDA is
            available).
        builtin_size: (train, val, test) sizes of the built-in set.
    """

    def __init__(self, manifest: str | None = None, modalities: list[str] | None = None, batch_size: int = 64,
                 num_workers: int | None = None, on_error: str = "raise", image_size: int | None = None,
                 image_channels: int | None = None, augment: bool = True, sample_rate: int | None = None,
                 audio_seconds: float = 1.0,
                 text_model: str | None = None, max_text_length: int = 40, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, split_seed: int = 0, cache: str | bool = "none",
                 builtin_size: tuple[int, int, int] = (3000, 500, 1000), towers: dict | None = None,
                 validate: str = "header", cache_dir: str | None = None, pin_memory: bool | None = None):
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error must be 'raise' or 'skip', got '{on_error}'")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}")
        if validate not in MODES:
            raise ConfigError(f"data.validate must be one of {list(MODES)}, got '{validate}'")
        cache = {True: "disk", False: "none"}.get(cache, cache) if isinstance(cache, bool) else cache
        if cache not in ("disk", "none"):
            raise ConfigError(f"data.cache must be 'disk' or 'none', got '{cache}'")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0 (or null for the default), got {num_workers}")
        self.manifest = manifest
        self.modalities_arg = list(modalities) if modalities is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_error = on_error
        self.requested = {"image_size": image_size, "image_channels": image_channels, "sample_rate": sample_rate,
                          "text_model": text_model}
        self.towers = OmegaConf.to_container(towers, resolve=True) if OmegaConf.is_config(towers) else towers
        self.augment = augment
        self.audio_seconds = audio_seconds
        self.max_text_length = max_text_length
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.cache = cache
        self.cache_dir = cache_dir
        self.validate = validate
        self.pin_memory = pin_memory
        self.builtin_size = tuple(builtin_size)
        self.datasets: dict[str, ManifestDataset] = {}
        self.skipped: list[Problem] = []
        self.classes: list[str] = []
        self.modalities: list[str] = []
        self.resolve_preprocessing(())

    def resolve_preprocessing(self, modalities) -> dict[str, Preprocessing]:
        """Asks the towers of `modalities` what input they need (the others keep the built-in settings) and
        applies the explicit data.* values, which must agree with the tower where it cannot adapt."""
        want = self.requested
        image = self._ask("image", modalities) or ImagePreprocessing(
            crop=want["image_size"] or 32, channels=want["image_channels"] or 1,
            mean=(0.5,) * (want["image_channels"] or 1), std=(0.5,) * (want["image_channels"] or 1))
        if want["image_channels"] is not None and want["image_channels"] != image.channels:
            raise ConfigError(f"data.image_channels={want['image_channels']}, but the image tower takes {image.channels} "
                              "channel(s): leave data.image_channels unset (the data follow the tower) or set the "
                              "tower's (model.encoders.image.in_channels for the built-in one)")
        if want["image_size"] is not None and want["image_size"] != image.crop:
            image = image.with_size(int(want["image_size"]))
        audio = self._ask("audio", modalities) or AudioPreprocessing(sample_rate=want["sample_rate"] or 8000)
        if want["sample_rate"] is not None and want["sample_rate"] != audio.sample_rate:
            raise ConfigError(f"data.sample_rate={want['sample_rate']}, but the audio tower takes {audio.sample_rate} Hz: "
                              "leave data.sample_rate unset (the data follow the tower) or set the tower's "
                              "(model.encoders.audio.sample_rate for the built-in one)")
        text = self._ask("text", modalities) or TextPreprocessing(tokenizer=want["text_model"])
        if want["text_model"] is not None and want["text_model"] != text.tokenizer:
            raise ConfigError(f"data.text_model='{want['text_model']}', but the text tower uses the tokenizer "
                              f"'{text.tokenizer}': leave data.text_model unset (the tokenizer follows the tower)")
        self.image_prep, self.audio_prep, self.text_prep = image, audio, text
        self.image_size, self.image_channels = image.crop, image.channels
        self.sample_rate, self.text_model = audio.sample_rate, text.tokenizer
        self.audio_samples = int(round(self.audio_seconds * audio.sample_rate))
        return self.preprocessing

    def _ask(self, modality: str, modalities) -> Preprocessing | None:
        if modality not in modalities or not self.towers or self.towers.get(modality) is None:
            return None
        return encoder_preprocessing(modality, self.towers[modality])

    @property
    def preprocessing(self) -> dict[str, Preprocessing]:
        """modality -> what its tower is fed (ImagePreprocessing, AudioPreprocessing, TextPreprocessing)."""
        return {"image": self.image_prep, "audio": self.audio_prep, "text": self.text_prep}

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
        rows, problems = iter_manifest(path, self.modalities_arg)
        rows = RowTable.of(rows)  # flat arrays, not an object per row: bounded memory, shared by the workers
        self.resolve_preprocessing(set(rows.present()))
        if "video" in rows.present() or any(problem.column == "video" for problem in problems):
            raise ManifestError(path, [Problem(0, "video", "classification recipes have no video tower: drop the "
                                       "column or choose the others with data.modalities=[image,audio,text]; "
                                       "talking-face videos train with recipe=sync data.video_dir=<folder>")])
        self.decoder = self._decoder()
        rows, media_problems = validate_media(rows, self.validate, self.decoder)
        problems = sorted(problems + media_problems, key=lambda p: (p.row, p.column))
        if problems and self.on_error == "raise":
            raise ManifestError(path, problems)
        self.skipped = problems
        if problems and run_dir is not None:
            write_skip_report(Path(run_dir) / "skipped_rows.csv", problems)
        if problems:
            log.warning(f"skipped {len(problems)} problem(s) in '{path}'" + (f"; see {Path(run_dir) / 'skipped_rows.csv'}" if run_dir else ""))
        splits = self._assign_splits(rows, path)
        self.modalities = sorted(rows.present())
        self.classes = sort_labels(set(rows.values("label")))
        class_index = {c: i for i, c in enumerate(self.classes)}
        self.tokenizer = build_tokenizer(self.text_prep.tokenizer, **self.text_prep.extra)
        self.max_text_length = self.text_prep.max_length or self.max_text_length
        for split in SPLITS:
            self.datasets[split] = ManifestDataset(
                splits[split], class_index, self.modalities, self._image_transform(train=split == "train"),
                self.image_channels, self.sample_rate, self.audio_samples, cache=False,
                pad_audio=not self.audio_prep.variable_length, decoder=self.decoder, tokenizer=self.tokenizer,
                max_text_length=self.max_text_length)
        audio = self.audio_prep
        batcher = AudioBatcher(audio.sample_rate, audio.feature_extractor, audio.padding, audio.extra) \
            if audio.variable_length and "audio" in self.modalities else None
        self.collate = Collate(self.modalities, self.tokenizer, self.max_text_length,
                               (self.image_channels, self.image_size, self.image_size),
                               min(self.audio_samples, self.sample_rate) if batcher else self.audio_samples, batcher)

    def _decoder(self) -> MediaDecoder:
        """The files' decoder: the image tower's resize (and crop) before the disk cache, which it keys."""
        prep = self.image_prep
        cache = None
        if self.cache == "disk":
            cache = DiskCache(self.cache_dir or default_cache_dir())
            cache.sweep_temporary()
        return MediaDecoder(self.image_channels, self.sample_rate, self.audio_samples,
                            pad_audio=not self.audio_prep.variable_length, image_resize=self._image_resize(),
                            image_resize_key=f"resize={prep.resize}/crop={prep.crop}/{prep.interpolation}", cache=cache)

    def _assign_splits(self, rows: RowTable, path: Path) -> dict[str, RowTable]:
        rng = random.Random(self.split_seed)
        split_of = rows.values("split")
        has_split = [s is not None for s in split_of]
        if any(has_split) and not all(has_split):
            raise ManifestError(path, [Problem(int(rows.numbers[i]), "split", "empty split while other rows have one")
                                       for i, s in enumerate(split_of) if s is None])
        splits: dict[str, list[int]] = {s: [] for s in SPLITS}  # positions in `rows` (in row-number order)
        if not any(has_split):
            order = list(range(len(rows)))
            rng.shuffle(order)
            n_test = int(round(len(order) * self.test_fraction))
            splits["test"] = order[:n_test]
            splits["train"] = order[n_test:]
        else:
            for i, s in enumerate(split_of):
                splits[s].append(i)
        if not splits["val"] and splits["train"]:
            order = splits["train"][:]
            rng.shuffle(order)
            n_val = max(1, int(round(len(order) * self.val_fraction)))
            splits["val"], splits["train"] = sorted(order[:n_val]), sorted(order[n_val:])
        empty = [s for s in ("train", "test") if not splits[s]]
        if empty:
            raise ManifestError(path, [Problem(0, "split", f"no usable rows in split '{s}'") for s in empty])
        return {s: rows.select(positions) for s, positions in splits.items()}

    def _image_resize(self) -> transforms.Compose:
        """The deterministic part of the image transform (before the disk cache): PIL -> PIL crop x crop."""
        prep = self.image_prep
        mode = transforms.InterpolationMode(prep.interpolation)
        if prep.resize is None:
            return transforms.Compose([transforms.Resize((prep.crop, prep.crop), interpolation=mode)])
        # shorter side to `resize`, then the centre crop (torchvision / timm / HF evaluation transforms)
        return transforms.Compose([transforms.Resize(prep.resize, interpolation=mode), transforms.CenterCrop(prep.crop)])

    def _image_transform(self, train: bool) -> transforms.Compose:
        """What follows the decoder's resize, every time: augmentation (train), tensor, normalisation."""
        prep = self.image_prep
        steps = []
        if train and self.augment:
            steps.append(transforms.RandomAffine(degrees=8, translate=(0.06, 0.06), scale=(0.92, 1.08)))
        steps += [transforms.ToTensor(), transforms.Normalize(list(prep.mean), list(prep.std))]
        return transforms.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.prepare()

    def _devices(self) -> int:
        """Training processes on this machine (1 outside a trainer)."""
        trainer = getattr(self, "trainer", None)
        return max(1, int(getattr(trainer, "num_devices", 1) or 1)) if trainer is not None else 1

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = default_num_workers(self._devices()) if self.num_workers is None else self.num_workers
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        trainer = getattr(self, "trainer", None)
        if pin and trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") != "cuda":
            pin = False  # a CPU run on a GPU host
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, collate_fn=self.collate,
                          num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
                          generator=torch.Generator().manual_seed(self.split_seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return with_eval_sampler(self._loader("val", shuffle=False))  # under DDP: every row once

    def test_dataloader(self) -> DataLoader:
        return with_eval_sampler(self._loader("test", shuffle=False))


def default_num_workers(processes: int = 1) -> int:
    """DataLoader workers per loader: this process's share of the usable CPUs less one (the training loop), at
    least 1 and at most 12."""
    return max(1, min(12, usable_cpus() // max(1, processes) - 1))


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
