"""Up-front check of every media file of a manifest, in parallel worker processes, with progress and files/s.

`mode="header"` reads each file's header and checks that it is whole (fusion/data/media_checks.py): fast, and
it finds missing, empty, garbage, truncated and implausible files. `mode="decode"` decodes every file as
training will (and fills the disk cache on the way, when the decoder has one), so bad samples are found too.
Every problem is returned at once, each with its row, column and file.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial

import torch

from fusion.data.decoder import MediaDecoder
from fusion.data.manifest import FILE_MODALITIES, ManifestRow, Problem
from fusion.data.media import MediaError
from fusion.data.media_checks import check_header
from fusion.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("header", "decode")
CHUNK = 64  # files per task sent to a worker
PARALLEL_FROM = 256  # fewer files are checked in this process (starting workers would cost more)

Check = tuple[int, str, str]  # (row number, column, path)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_files(checks: Sequence[Check], mode: str, decoder: MediaDecoder | None) -> list[Problem]:
    """Problems of some files (runs in a worker)."""
    problems = []
    for row, column, path in checks:
        if mode == "header":
            reason = check_header(path, column)
        else:
            try:
                decoder.load(path, column)
                reason = None
            except MediaError as err:
                reason = err.reason
        if reason:
            problems.append(Problem(row, column, reason, path))
    return problems


def chunks(items: Sequence[Check], size: int) -> Iterator[Sequence[Check]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def validate_media(rows: Sequence[ManifestRow], mode: str = "header", decoder: MediaDecoder | None = None,
                   workers: int | None = None) -> tuple[list[ManifestRow], list[Problem]]:
    """Checks every file of `rows`; returns the rows whose files all passed and every problem found.

    Args:
        rows: rows whose structure was checked (fusion.data.manifest.parse_manifest).
        mode: "header" (fast checks) or "decode" (full decode with `decoder`).
        decoder: the dataset's decoder (required for mode="decode").
        workers: processes (None = every usable CPU; fewer than PARALLEL_FROM files are checked here).
    """
    if mode not in MODES:
        raise ConfigError(f"data.validate must be one of {list(MODES)}, got '{mode}'")
    if mode == "decode" and decoder is None:
        raise ValueError("validate_media(mode='decode') needs the dataset's decoder")
    checks = [(row.row, m, path) for row in rows for m, path in row.media.items() if m in FILE_MODALITIES]
    workers = usable_cpus() if workers is None else workers
    start = time.perf_counter()
    problems: list[Problem] = []
    with Progress(len(checks), mode) as progress:
        if workers <= 1 or len(checks) < PARALLEL_FROM:
            for part in chunks(checks, CHUNK):
                problems += check_files(part, mode, decoder)
                progress.update(len(part))
        else:
            # fork is cheap and inherits the decoder; a process that uses CUDA must not fork
            method = "spawn" if torch.cuda.is_initialized() or "fork" not in multiprocessing.get_all_start_methods() else "fork"
            with multiprocessing.get_context(method).Pool(workers) as pool:
                parts = list(chunks(checks, CHUNK))
                for part, found in zip(parts, pool.imap(partial(check_files, mode=mode, decoder=decoder), parts), strict=True):
                    problems += found
                    progress.update(len(part))
    seconds = time.perf_counter() - start
    log.info("validated %d files (%s) in %.1f s: %.0f files/s with %d process(es), %d problem(s)", len(checks), mode,
             seconds, len(checks) / max(seconds, 1e-9), workers if len(checks) >= PARALLEL_FROM else 1, len(problems))
    bad = {p.row for p in problems}
    return [row for row in rows if row.row not in bad], problems


class Progress:
    """A tqdm bar with files/s on a terminal; elsewhere a log line at most every 10 s."""

    def __init__(self, total: int, mode: str, every_s: float = 10.0):
        self.total, self.mode, self.every_s = total, mode, every_s
        self.done, self.start, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="files", desc=f"validating ({mode})", leave=False)

    def __enter__(self) -> Progress:
        return self

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last > self.every_s:
            self.last = now
            log.info("  validating (%s): %d/%d files (%.0f files/s)", self.mode, self.done, self.total,
                     self.done / (now - self.start))

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
