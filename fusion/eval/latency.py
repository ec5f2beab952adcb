"""Latency and throughput measurement with warm-up and device synchronisation.

CUDA kernels run asynchronously: without a synchronisation before reading the clock, a timer measures only
the kernel launch. Every timed call here is bracketed by ``sync()`` so the interval covers the finished work,
and a few untimed warm-up calls come first (allocator growth, cuDNN/oneDNN autotuning, torch.compile
tracing). Per-call latencies are kept, so percentiles (p50/p95/p99) are reported rather than a mean that hides
tail latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


def print_now(message: str) -> None:
    """Progress line, flushed at once (stdout is block-buffered when piped)."""
    print(message, flush=True)


def synchronize(device: torch.device | str) -> None:
    """Waits until all queued work on ``device`` has finished (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fix_threads(num_threads: int | None) -> int:
    """Pins the intra-op thread count of torch (if given) and returns the count in effect."""
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()


@dataclass
class LatencyStats:
    """Per-call latency percentiles in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    iters: int
    warmup: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an ascending list, ``q`` in [0, 100]."""
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def time_calls(
    run: Callable[[], object],
    warmup: int,
    iters: int,
    sync: Callable[[], None],
) -> list[float]:
    """Calls ``run`` ``warmup`` times untimed, then ``iters`` times timed; returns seconds per timed call.

    Each timed call is preceded and followed by ``sync()``, so queued asynchronous work from before is not
    billed to it and its own work is finished when the clock is read.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        run()
    sync()
    seconds = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        run()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_latency(
    run: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 10,
    iters: int = 100,
    sync: Callable[[], None] | None = None,
) -> LatencyStats:
    """Latency percentiles of ``run()`` (one forward pass, typically at batch size 1).

    Args:
        run: Zero-argument callable doing the work to time (inputs already on the device).
        device: Device whose queue is synchronised around each call.
        warmup: Untimed calls before timing.
        iters: Timed calls.
        sync: Overrides the synchronisation function (defaults to ``synchronize(device)``).
    """
    sync = sync or (lambda: synchronize(device))
    millis = sorted(1000.0 * s for s in time_calls(run, warmup, iters, sync))
    return LatencyStats(
        p50_ms=_percentile(millis, 50),
        p95_ms=_percentile(millis, 95),
        p99_ms=_percentile(millis, 99),
        mean_ms=sum(millis) / len(millis),
        min_ms=millis[0],
        iters=iters,
        warmup=warmup,
    )


def measure_throughput(
    run: Callable[[], object],
    batch_size: int,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    iters: int = 10,
    sync: Callable[[], None] | None = None,
) -> float:
    """Samples per second of ``run()`` processing one batch of ``batch_size``, from the median call time."""
    sync = sync or (lambda: synchronize(device))
    seconds = sorted(time_calls(run, warmup, iters, sync))
    return batch_size / _percentile(seconds, 50)
