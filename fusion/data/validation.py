"""Up-front check of every media file of a manifest, in parallel worker processes, with progress and files/s.

`mode="header"` reads each file's header and checks that it is whole (fusion/data/media_checks.py): fast, and
it finds missing, empty, garbage, truncated and implausible files. `mode="decode"` decodes every file as
training will (and fills the disk cache on the way, when the decoder has one), so bad samples are found too.
Every problem is returned at once, each with its row, column and file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from fusion.data.decoder import MediaDecoder
from fusion.data.manifest import FILE_MODALITIES, ManifestRow, Problem
from fusion.data.media import MediaError
from fusion.data.media_checks import check_header
from fusion.data.row_table import RowTable
from fusion.data.worker_pool import process_pool, results
from fusion.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("header", "decode")
CHUNK = 32  # rows per task sent to a worker
PARALLEL_FROM = 128  # fewer rows are checked in this process (starting workers would cost more)

_job: tuple[Sequence[ManifestRow], str, MediaDecoder | None] | None = None  # a worker's rows, mode and decoder


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_row(row: ManifestRow, mode: str, decoder: MediaDecoder | None) -> list[Problem]:
    """Problems of the files of one row."""
    problems = []
    for column, path in row.media.items():
        if column not in FILE_MODALITIES:
            continue
        if mode == "header":
            reason = check_header(path, column)
        else:
            try:
                decoder.load(path, column)
                reason = None
            except MediaError as err:
                reason = err.reason
        if reason:
            problems.append(Problem(row.row, column, reason, path))
    return problems


def _start_worker(rows: Sequence[ManifestRow], mode: str, decoder: MediaDecoder | None) -> None:
    global _job
    _job = (rows, mode, decoder)


def _check_range(bounds: tuple[int, int]) -> tuple[list[Problem], int]:
    """Problems of rows [a, b) of the worker's rows, and how many files they have."""
    rows, mode, decoder = _job
    problems, files = [], 0
    for i in range(*bounds):
        row = rows[i]
        files += sum(m in FILE_MODALITIES for m in row.media)
        problems += check_row(row, mode, decoder)
    return problems, files


def count_files(rows: Sequence[ManifestRow]) -> int:
    """Media files referenced by `rows`."""
    if isinstance(rows, RowTable):
        return sum(int(np.count_nonzero(np.diff(rows.columns[m].offsets))) for m in rows.modalities if m in FILE_MODALITIES)
    return sum(m in FILE_MODALITIES for row in rows for m in row.media)


def validate_media(rows: Sequence[ManifestRow], mode: str = "header", decoder: MediaDecoder | None = None,
                   workers: int | None = None) -> tuple[Sequence[ManifestRow], list[Problem]]:
    """Checks every file of `rows`; returns the rows whose files all passed (a RowTable for a RowTable) and
    every problem found.

    Args:
        rows: rows whose structure was checked (fusion.data.manifest.parse_manifest), a list or a RowTable.
        mode: "header" (fast checks) or "decode" (full decode with `decoder`).
        decoder: the dataset's decoder (required for mode="decode").
        workers: processes (None = every usable CPU; fewer than PARALLEL_FROM rows are checked here).
    """
    if mode not in MODES:
        raise ConfigError(f"data.validate must be one of {list(MODES)}, got '{mode}'")
    if mode == "decode" and decoder is None:
        raise ValueError("validate_media(mode='decode') needs the dataset's decoder")
    workers = usable_cpus() if workers is None else workers
    workers = workers if len(rows) >= PARALLEL_FROM else 1
    start = time.perf_counter()
    problems: list[Problem] = []
    parts = [(a, min(a + CHUNK, len(rows))) for a in range(0, len(rows), CHUNK)]
    files = count_files(rows)
    with Progress(files, mode) as progress:
        if workers <= 1:
            _start_worker(rows, mode, decoder)
            for found, checked in map(_check_range, parts):
                problems += found
                progress.update(checked)
        else:
            with process_pool(workers, _start_worker, (rows, mode, decoder)) as pool:
                for found, checked in results(pool.map(_check_range, parts), f"checking media files ({mode})"):
                    problems += found
                    progress.update(checked)
    _start_worker(None, mode, None)
    seconds = time.perf_counter() - start
    log.info("validated %d rows, %d files (%s) in %.1f s: %.0f files/s with %d process(es), %d problem(s)", len(rows),
             files, mode, seconds, files / max(seconds, 1e-9), workers, len(problems))
    bad = {p.row for p in problems}
    keep = [i for i in range(len(rows)) if _number(rows, i) not in bad]
    return (rows.select(keep) if isinstance(rows, RowTable) else [rows[i] for i in keep]), problems


def _number(rows: Sequence[ManifestRow], index: int) -> int:
    return int(rows.numbers[index]) if isinstance(rows, RowTable) else rows[index].row


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
