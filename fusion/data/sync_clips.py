"""Talking-face files -> decoded sync clips, in worker processes, one disk-cache entry per file.

Each file is decoded once (mouth crops + log-mel, `load_sync_clip`) and stored in a `DiskCache` under a key of
its bytes and the feature settings, so adding a file decodes only that file and a run killed mid-way keeps
every clip it finished. An entry is one structured array (`clip_entry`) holding every array of the clip, so it
is written atomically as a whole and read back memory-mapped: the clips live in the page cache, not in the
process. A file that cannot be used is cached as its problem (the message, with the file name put back on
reading), so it is named again without decoding it again.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fusion.data.disk_cache import DiskCache
from fusion.data.face_track import TrackerConfig
from fusion.data.validation import Progress, usable_cpus
from fusion.data.video_io import load_sync_clip
from fusion.data.worker_pool import process_pool, results

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when what is stored for the same settings changes
FILE_MARK = "{file}"  # stands for the file's path in a cached problem message


def default_decode_workers() -> int:
    """Usable CPUs less one (for this process), at least 1."""
    return max(1, usable_cpus() - 1)


def clip_entry(clip: dict) -> np.ndarray:
    """Decoded clip -> one structured array (1,): fps, source_fps, audio float16 (T*S, F), face float16 (T,),
    mouth uint8 (T, h, w); 8-byte fields first, so every field stays aligned in the memory map."""
    mouth, audio, face = clip["mouth"].numpy(), clip["audio"].half().numpy(), clip["face"].half().numpy()
    layout = np.dtype([("fps", "<f8"), ("source_fps", "<f8"), ("audio", "<f2", audio.shape),
                       ("face", "<f2", face.shape), ("mouth", "u1", mouth.shape)])
    entry = np.zeros(1, dtype=layout)
    entry["fps"], entry["source_fps"] = clip["fps"], clip["source_fps"]
    entry["audio"][0], entry["face"][0], entry["mouth"][0] = audio, face, mouth
    return entry


def problem_entry(path: str | Path, problem: str) -> np.ndarray:
    """A file's problem as an entry (1,) whose only field is the UTF-8 message, the path replaced by FILE_MARK."""
    text = problem.replace(str(path), FILE_MARK).encode()
    return np.array([text], dtype=np.dtype([("problem", f"S{max(1, len(text))}")]))


def mapped(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only memory-mapped array (no copy); it must never be written to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": the windows only read (and copy) from it
        return torch.from_numpy(array)


def read_entry(entry: np.ndarray, path: str | Path) -> dict | str | None:
    """Entry -> clip dict (tensors over the map), problem message, or None for a layout this code did not write."""
    names = entry.dtype.names or ()
    if entry.shape != (1,):
        return None
    if names == ("problem",):
        return entry["problem"][0].decode(errors="replace").replace(FILE_MARK, str(path))
    if names != ("fps", "source_fps", "audio", "face", "mouth"):
        return None
    path = Path(path)
    return {"name": path.stem, "path": str(path), "mouth": mapped(entry["mouth"][0]),  # (T, h, w) uint8
            "audio": mapped(entry["audio"][0]),  # (T*S, F) float16
            "face": mapped(entry["face"][0]),  # (T,) float16
            "fps": float(entry["fps"][0]), "source_fps": float(entry["source_fps"][0])}


@dataclass
class SyncClipDecoder:
    """Decodes sync clips with fixed feature settings, through the disk cache (picklable for worker processes).

    Attributes:
        features: the data module's feature settings (sample_rate, n_mels, subframes, crop_size, mouth, mouth_box
            and, for mouth=track, tracker); they key the cache.
        tracker: tracker settings (mouth=track).
        cache_root: folder of the DiskCache.
    """

    features: dict
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    cache_root: str = ""

    @property
    def cache(self) -> DiskCache:
        return DiskCache(self.cache_root)

    def settings(self) -> str:
        """The settings string of the cache keys."""
        return f"sync/v{CACHE_FORMAT}/" + json.dumps(self.features, sort_keys=True)

    def decode(self, path: str | Path) -> tuple[np.ndarray, bool]:
        """The entry of one file (clip or problem) and whether it may be cached.

        Problems of the file's bytes (ValueError: undecodable, no video stream, no face) are cached; a missing
        file or a RuntimeError (which may pass, e.g. out of memory) is reported and tried again next time.
        """
        f = self.features
        try:
            clip = load_sync_clip(path, f["sample_rate"], f["n_mels"], f["subframes"], tuple(f["mouth_box"]),
                                  (f["crop_size"], f["crop_size"]), f["mouth"], self.tracker)
        except (FileNotFoundError, RuntimeError) as err:
            return problem_entry(path, str(err)), False
        except ValueError as err:
            return problem_entry(path, str(err)), True
        return clip_entry(clip), True

    def decode_into_cache(self, path: str | Path, key: str) -> np.ndarray | None:
        """Decodes one file and stores its entry under `key`; returns the entry only if it may not be cached."""
        entry, keep = self.decode(path)
        if not keep:
            return entry
        self.cache.put(key, entry)
        return None


_decoder: SyncClipDecoder | None = None  # a worker process's decoder


def _start_worker(decoder: SyncClipDecoder) -> None:
    global _decoder
    _decoder = decoder
    torch.set_num_threads(1)  # one process per CPU already
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def _decode_task(task: tuple[int, str, str]) -> tuple[int, np.ndarray | None]:
    """Decodes file `task` = (index, path, key) in a worker: (index, its entry if it was not cached)."""
    index, path, key = task
    return index, _decoder.decode_into_cache(path, key)


def load_sync_clips(files: list[Path], decoder: SyncClipDecoder, workers: int | None = None,
                    ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Clips of `files` from the cache, decoding those not in it in `workers` processes.

    Args:
        files: video files, in the order the clips are returned.
        decoder: feature settings and cache folder.
        workers: decoding processes (None = usable CPUs less one; 1 = decode in this process).

    Returns:
        Clips ({"name", "path", "mouth" uint8 (T, h, w), "audio" float16 (T*S, F), "face" float16 (T,), "fps",
        "source_fps"}, memory-mapped) of the decodable files, and (file, problem) of the others, in file order.
    """
    start = time.perf_counter()
    cache, settings = decoder.cache, decoder.settings()
    swept = cache.sweep_temporary()
    if swept:
        log.info("removed %d temporary file(s) of killed writers from %s", swept, cache.root)
    keys: list[str | None] = [None] * len(files)
    entries: dict[int, np.ndarray] = {}  # found in the cache, or not cacheable (unreadable or vanished files)
    todo, sharing = [], {}  # sharing: key -> indices of the files with those bytes
    for index, path in enumerate(files):
        try:
            keys[index] = DiskCache.file_key(path, settings)
        except OSError as err:
            entries[index] = problem_entry(path, f"cannot read video file '{path}' ({err.strerror})")
            continue
        entry = cache.get(keys[index])  # memory-mapped
        if entry is not None and read_entry(entry, path) is not None:
            entries[index] = entry
        elif keys[index] not in sharing:  # identical files are decoded once
            todo.append((index, str(path), keys[index]))
        sharing.setdefault(keys[index], []).append(index)
    workers = default_decode_workers() if workers is None else max(1, int(workers))
    workers = max(1, min(workers, len(todo)))
    if todo:
        log.info("decoding %d of %d videos (mouth crops + log-mel) with %d process(es); cached in %s", len(todo),
                 len(files), workers, cache.root)
    with Progress(len(todo), "sync decode") as progress:
        if workers == 1:
            done = ((i, decoder.decode_into_cache(path, key)) for i, path, key in todo)
        else:
            # spawned: a forked child can deadlock in OpenCV's thread pool, which does not survive a fork
            pool = process_pool(workers, _start_worker, (decoder,), fork=False)
            done = results(pool.map(_decode_task, todo), "decoding videos", "data.decode_workers=1")
        try:
            for index, entry in done:
                if entry is not None:
                    entries |= dict.fromkeys(sharing[keys[index]], entry)
                progress.update(1)
        finally:
            if workers > 1:
                pool.shutdown(cancel_futures=True)
    clips, problems = [], []
    for index, path in enumerate(files):
        entry = entries[index] if index in entries else cache.get(keys[index])  # decoded now: read back mapped
        value = None if entry is None else read_entry(entry, path)
        if value is None:
            raise RuntimeError(f"video file '{path}' was decoded but its cache entry {cache.path(keys[index])} "
                               "cannot be read back")
        if isinstance(value, dict):
            clips.append(value)
        else:
            problems.append((str(path), value))
    seconds = time.perf_counter() - start
    log.info("%d videos ready in %.1f s (%d decoded: %.2f files/s with %d process(es); %d from the cache), "
             "%d problem(s)", len(files), seconds, len(todo), len(todo) / max(seconds, 1e-9), workers,
             len(files) - len(todo), len(problems))
    return clips, problems
