"""LightningDataModule for audio-video sync: a folder of in-sync talking-face videos with injected offsets.

Every file is decoded once (mouth crops, tracked or cut with a fixed box, + log-mel at the video rate), in
parallel worker processes, into one disk-cache entry per file under ``cache_dir`` (keyed by the file's bytes and
every decoding and tracking setting; fusion/data/sync_clips.py); windows read the memory-mapped entries. Training
windows get a fresh random offset (constant, or a linear drift) each time they are drawn; validation and test
windows are drawn once from ``eval_seed``, so evaluation is deterministic.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from fusion.data.distributed_eval_sampler import with_eval_sampler
from fusion.data.face_track import TrackerConfig
from fusion.data.sync_augment import SyncAugment
from fusion.data.sync_clips import SyncClipDecoder, load_sync_clips
from fusion.data.video_io import DEFAULT_MOUTH_BOX, MOUTH_MODES
from fusion.errors import ConfigError, MissingFileError
from fusion.files import fusion_home
from fusion.temporal.offsets import (
    inject_offset,
    offsets_to_states,
    sample_offsets,
    valid_window_starts,
)

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mpg", ".mpeg", ".mp4", ".avi", ".mov", ".mkv", ".webm")


def window_item(clip: dict, offsets: torch.Tensor, start: int, max_offset: int, subframes: int,
                drift: bool, index: int) -> dict:
    """One sample: the shifted window of ``clip`` as model inputs and labels (copied out of the clip's arrays,
    which may be read-only memory maps)."""
    window = inject_offset(clip["mouth"], clip["audio"], offsets, start, subframes)
    steps = offsets.shape[0]
    return {
        "video": window.mouth.clone(),  # (W, h, w) uint8
        "audio": window.audio.float().view(steps, -1),  # (W, S*F) float32 (float16 in the clip)
        "offset": window.offsets,  # (W,) frames
        "state": offsets_to_states(window.offsets, max_offset),  # (W,)
        "frame_mask": torch.ones(steps, dtype=torch.bool),
        "drift": torch.tensor(drift),
        "clip": torch.tensor(index),
    }


class RandomOffsetWindows(Dataset):
    """Training windows: each access draws an offset path and a valid window start."""

    def __init__(self, clips: list[dict], window: int, max_offset: int, subframes: int, drift_fraction: float,
                 min_drift: float, max_drift: float, augment: SyncAugment | None = None, sample_rate: int = 16000,
                 fps: float = 25.0) -> None:
        self.clips, self.window, self.max_offset, self.subframes = clips, window, max_offset, subframes
        self.drift_fraction, self.min_drift, self.max_drift = drift_fraction, min_drift, max_drift
        self.augment = augment or SyncAugment.of(False)
        self.sample_rate, self.step_s = sample_rate, 1.0 / (fps * subframes)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        drift = bool(torch.rand(()) < self.drift_fraction)
        offsets = sample_offsets(None, self.window, self.max_offset, drift, self.min_drift, self.max_drift)
        lo, hi = valid_window_starts(clip["mouth"].shape[0], self.window, offsets, self.subframes)
        start = int(torch.randint(lo, hi + 1, ()))
        item = window_item(clip, offsets, start, self.max_offset, self.subframes, drift, index)
        item["video"] = self.augment.video(item["video"])  # (W, h, w), same timing
        steps = item["audio"].shape[0]
        audio = self.augment.audio(item["audio"].reshape(steps * self.subframes, -1), self.sample_rate, self.step_s)
        item["audio"] = audio.reshape(steps, -1)  # (W, S*F)
        return item


class FixedOffsetWindows(Dataset):
    """Evaluation windows drawn once from a seed: ``repeats`` constant and ``repeats`` drift windows per clip.

    The window is centred in the clip; constant offsets are integers uniform in [-K, K].
    """

    def __init__(self, clips: list[dict], window: int, max_offset: int, subframes: int, seed: int, repeats: int,
                 include_drift: bool, min_drift: float, max_drift: float) -> None:
        self.clips, self.max_offset, self.subframes = clips, max_offset, subframes
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for index, clip in enumerate(clips):
            start = (clip["mouth"].shape[0] - window) // 2
            kinds = [False] * repeats + ([True] * repeats if include_drift else [])
            for drift in kinds:
                offsets = sample_offsets(generator, window, max_offset, drift, min_drift, max_drift)
                self.items.append((index, offsets, start, drift))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict:
        index, offsets, start, drift = self.items[item]
        return window_item(self.clips[index], offsets, start, self.max_offset, self.subframes, drift, index)


class SyncDataModule(L.LightningDataModule):
    """Folder of in-sync videos -> train/val/test windows with injected offsets.

    Args:
        video_dir: folder with the video files (searched recursively).
        cache_dir: where decoded clips are cached, one entry per file (default: $FUSION_HOME/cache/sync).
        num_test: clips held out for testing (seeded split of the sorted file list).
        num_val: clips held out for checkpoint selection.
        split_seed: seed of the split.
        max_offset: K, largest injected offset in frames.
        window: frames per sample; clips need at least window + 2K frames.
        drift_fraction: share of training windows with a linear drift instead of a constant offset.
        min_drift: smallest total offset change of a drift window (frames).
        max_drift: largest total offset change of a drift window (frames).
        eval_seed: seed of the validation/test offsets.
        eval_repeats: constant (and drift) windows per evaluation clip.
        batch_size: windows per batch.
        num_workers: DataLoader workers.
        decode_workers: processes decoding the files not yet in the cache (null = usable CPUs less one, at
            least 1; 1 = in this process).
        sample_rate: audio resampling rate.
        n_mels: mel bands.
        subframes: audio feature steps per video frame.
        crop_size: side of the square mouth crop.
        mouth: "track" (face detector + tracker) or "box" (the fixed ``mouth_box``, for pre-cropped video).
        mouth_box: (top, left, height, width) of the crop as fractions of the frame (mouth=box).
        tracker: TrackerConfig fields (mouth=track), e.g. {"detect_every": 3}.
        on_error: raise | skip (skipped files are listed in <run folder>/skipped_videos.csv).
        augment: SyncAugment fields of the training windows (true: its defaults, false: none).
        max_clips: use only the first N files of the sorted list (null = all).
        test_names: regular expression; clips whose name matches it form the test set (num_test is then
            ignored) and never reach training or validation, e.g. "^[ps]" holds out two GRID sentence types.
    """

    def __init__(self, video_dir: str, cache_dir: str | None = None, num_test: int = 50, num_val: int = 10,
                 split_seed: int = 0, max_offset: int = 15, window: int = 44, drift_fraction: float = 0.5,
                 min_drift: float = 3.0, max_drift: float = 10.0, eval_seed: int = 0, eval_repeats: int = 4,
                 batch_size: int = 16, num_workers: int = 0, sample_rate: int = 16000, n_mels: int = 40,
                 subframes: int = 4, crop_size: int = 32, mouth: str = "track",
                 mouth_box: tuple[float, float, float, float] | list[float] = DEFAULT_MOUTH_BOX,
                 tracker: dict | None = None, on_error: str = "raise", augment: dict | bool = True,
                 max_clips: int | None = None, test_names: str | None = None,
                 decode_workers: int | None = None) -> None:
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
        if mouth not in MOUTH_MODES:
            raise ConfigError(f"data.mouth must be one of {MOUTH_MODES}, got {mouth!r}")
        if max_offset < 1 or window < 2:
            raise ConfigError(f"data.max_offset ({max_offset}) must be >= 1 and data.window ({window}) >= 2")
        if decode_workers is not None and decode_workers < 1:
            raise ConfigError(f"data.decode_workers must be >= 1 or null (usable CPUs less one), got {decode_workers}")
        self.video_dir = Path(video_dir).expanduser() if video_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else fusion_home() / "cache" / "sync"
        self.num_test, self.num_val, self.split_seed = num_test, num_val, split_seed
        self.max_offset, self.window = max_offset, window
        self.drift_fraction, self.min_drift, self.max_drift = drift_fraction, min_drift, max_drift
        self.eval_seed, self.eval_repeats = eval_seed, eval_repeats
        self.batch_size, self.num_workers, self.decode_workers = batch_size, num_workers, decode_workers
        self.tracker = TrackerConfig(**dict(tracker or {}))
        self.features = {"sample_rate": sample_rate, "n_mels": n_mels, "subframes": subframes,
                         "crop_size": crop_size, "mouth": mouth, "mouth_box": [float(x) for x in mouth_box]}
        if mouth == "track":
            self.features["tracker"] = self.tracker.key()
        self.on_error, self.max_clips, self.augment = on_error, max_clips, SyncAugment.of(augment)
        self.test_names = re.compile(test_names) if test_names else None
        self.splits: dict[str, list[dict]] = {}
        self.fps: float | None = None

    # ----------------------------------------------------------------------------------------------- loading
    def list_files(self) -> list[Path]:
        if self.video_dir is None:
            raise ConfigError("data.video_dir is not set: pass data.video_dir=<folder of in-sync videos>")
        if not self.video_dir.is_dir():
            raise MissingFileError(f"data.video_dir '{self.video_dir}' is not a folder")
        files = sorted(p for p in self.video_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        if self.max_clips:
            files = files[: self.max_clips]
        if not files:
            raise MissingFileError(f"data.video_dir '{self.video_dir}' has no video files ({', '.join(VIDEO_EXTENSIONS)})")
        return files

    @property
    def decoder(self) -> SyncClipDecoder:
        """Decodes files with this module's feature settings, through its cache."""
        return SyncClipDecoder(self.features, self.tracker, str(self.cache_dir))

    def load_clips(self) -> tuple[list[dict], list[tuple[str, str]]]:
        """Decodes (or loads from the cache) every file; returns memory-mapped clips and (file, problem) pairs."""
        return load_sync_clips(self.list_files(), self.decoder, self.decode_workers)

    def prepare(self, run_dir: str | Path | None = None) -> None:
        """Decodes/validates every video, splits them, and records unusable files.

        Raises:
            ValueError: naming each unusable file, unless on_error=skip (then listed in skipped_videos.csv).
        """
        clips, problems = self.load_clips()
        needed = self.window + 2 * self.max_offset
        usable = []
        for clip in clips:
            frames = clip["mouth"].shape[0]
            if frames < needed:
                problems.append((clip["path"], f"{frames} frames, fewer than window + 2*max_offset = {needed}"))
            else:
                usable.append(clip)
        rates = sorted({round(c["fps"], 3) for c in usable})
        if len(rates) > 1:
            problems.append((str(self.video_dir), f"mixed frame rates {rates}; use videos of one rate"))
        if problems and self.on_error == "raise":
            lines = "\n".join(f"  {path}: {why}" for path, why in problems)
            raise ConfigError(f"{len(problems)} unusable video(s) in '{self.video_dir}' (data.on_error=skip skips them):\n{lines}")
        if run_dir is not None and problems:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(run_dir) / "skipped_videos.csv", "w", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(["file", "problem"])
                writer.writerows(problems)
        if self.test_names is None and len(usable) <= self.num_test + self.num_val:
            raise ConfigError(f"{len(usable)} usable videos in '{self.video_dir}' leave none for training "
                             f"(data.num_test={self.num_test}, data.num_val={self.num_val})")
        order = torch.randperm(len(usable), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        if self.test_names is not None:
            held = [i for i in order if self.test_names.search(usable[i]["name"])]
            rest = [i for i in order if not self.test_names.search(usable[i]["name"])]
            if not held or len(rest) <= self.num_val:
                raise ConfigError(f"data.test_names={self.test_names.pattern!r} matches {len(held)} of {len(usable)} "
                                  f"clips in '{self.video_dir}': the test set and the training set must both be non-empty")
            order, num_test = held + rest, len(held)
        else:
            num_test = self.num_test
        test = sorted(order[:num_test])
        val = sorted(order[num_test: num_test + self.num_val])
        train = sorted(order[num_test + self.num_val:])
        self.splits = {name: [usable[i] for i in idx] for name, idx in (("train", train), ("val", val), ("test", test))}
        self.fps = float(rates[0])

    @property
    def spec(self) -> dict:
        """Plain description of the data for the task (stored in its hyper-parameters)."""
        if not self.splits:
            raise RuntimeError("SyncDataModule.prepare(run_dir) must run before .spec is read")
        return {"modalities": ["audio", "video"], "fps": self.fps, "max_offset": self.max_offset,
                "window": self.window, **{k: v for k, v in self.features.items()},
                "num_clips": {k: len(v) for k, v in self.splits.items()},
                "test_clips": [c["name"] for c in self.splits["test"]]}

    # ----------------------------------------------------------------------------------------------- loaders
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.prepare(None)

    def _eval_set(self, split: str, seed_shift: int) -> FixedOffsetWindows:
        return FixedOffsetWindows(self.splits[split], self.window, self.max_offset, self.features["subframes"],
                                  self.eval_seed + seed_shift, self.eval_repeats, True, self.min_drift,
                                  self.max_drift)

    def train_dataloader(self) -> DataLoader:
        data = RandomOffsetWindows(self.splits["train"], self.window, self.max_offset, self.features["subframes"],
                                   self.drift_fraction, self.min_drift, self.max_drift, self.augment,
                                   self.features["sample_rate"], self.fps)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          drop_last=len(data) > self.batch_size, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:  # under DDP: every window once (with_eval_sampler)
        return with_eval_sampler(DataLoader(self._eval_set("val", 1), batch_size=self.batch_size,
                                            num_workers=self.num_workers))

    def test_dataloader(self) -> DataLoader:
        return with_eval_sampler(DataLoader(self._eval_set("test", 0), batch_size=self.batch_size,
                                            num_workers=self.num_workers))
