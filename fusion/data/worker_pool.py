"""Process pools for the up-front data work (manifest validation, video decoding) that fail instead of hanging.

`multiprocessing.Pool` waits forever for the result of a worker that died (killed, or crashed inside a native
decoder); `concurrent.futures.ProcessPoolExecutor` notices the death and raises. `results` turns that into an
error that says what was being done and how to find the file.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch


def process_pool(workers: int, initializer: Callable, initargs: tuple, fork: bool = True) -> ProcessPoolExecutor:
    """`workers` processes, each set up by `initializer(*initargs)`. Forked where possible (cheap, shares the
    parent's memory); spawned with ``fork=False`` (libraries whose thread pools do not survive a fork, such as
    OpenCV's once the parent used it) or once the process has used CUDA, which must not fork."""
    fork = fork and "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized()
    return ProcessPoolExecutor(workers, multiprocessing.get_context("fork" if fork else "spawn"), initializer, initargs)


def results(items: Iterable, what: str, serial_hint: str | None = None) -> Iterator:
    """Yields from `items` (a pool's `map`); a worker that died becomes a RuntimeError naming `what` and, where
    given, how to rerun it in one process (`serial_hint`), where the failing file shows."""
    try:
        yield from items
    except BrokenProcessPool as err:
        hint = f"; rerun with {serial_hint} to see the file that fails" if serial_hint else ""
        raise RuntimeError(f"a worker process died while {what} (killed, out of memory, or a crash in a native "
                           f"decoder){hint}") from err
