import numpy as np
import pytest
import torch
from torch import nn

from fusion.eval import latency
from fusion.eval.latency import fix_threads, measure_latency, measure_throughput


class RecordingModule(nn.Module):
    """Appends "call" to a shared event log on every forward."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.events.append("call")
        return x * 2


def test_warm_up_calls_come_first_and_every_timed_call_is_synchronised():
    events: list[str] = []
    module = RecordingModule(events)
    x = torch.ones(1, 3)
    stats = measure_latency(lambda: module(x), warmup=4, iters=6, sync=lambda: events.append("sync"))
    assert stats.iters == 6 and stats.warmup == 4
    assert events[:4] == ["call"] * 4  # warm-up, untimed
    timed = events[4:]
    assert timed[0] == "sync"  # drains warm-up work before the first clock read
    # every timed call is bracketed: sync, (clock), call, sync, (clock)
    assert timed[1:] == ["sync", "call", "sync"] * 6
    assert events.count("call") == 10


def test_percentiles_match_numpy_on_known_durations(monkeypatch):
    durations = [0.004, 0.001, 0.010, 0.002, 0.003, 0.050, 0.002, 0.001, 0.005, 0.002]
    clock = {"now": 0.0, "i": 0}
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock["now"])

    def run() -> None:
        if clock["i"] >= 2:  # the first two calls are warm-up and get no duration
            clock["now"] += durations[clock["i"] - 2]
        clock["i"] += 1

    stats = measure_latency(run, warmup=2, iters=len(durations), sync=lambda: None)
    millis = 1000 * np.array(durations)
    for q, value in ((50, stats.p50_ms), (95, stats.p95_ms), (99, stats.p99_ms)):
        assert value == pytest.approx(np.percentile(millis, q))
    assert stats.mean_ms == pytest.approx(millis.mean())
    assert stats.min_ms == pytest.approx(1.0)


def test_throughput_is_batch_size_over_median_call_time(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock["now"])

    def run() -> None:
        clock["now"] += 0.5

    assert measure_throughput(run, batch_size=64, warmup=1, iters=5, sync=lambda: None) == pytest.approx(128.0)


def test_cpu_device_sync_is_a_no_op_and_threads_are_fixed():
    previous = torch.get_num_threads()
    try:
        assert fix_threads(1) == 1 and torch.get_num_threads() == 1
        assert fix_threads(None) == 1
        with pytest.raises(ValueError, match="num_threads"):
            fix_threads(0)
    finally:
        torch.set_num_threads(previous)
    stats = measure_latency(lambda: torch.ones(3).sum(), device="cpu", warmup=1, iters=5)
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p95_ms <= stats.p99_ms


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sync_waits_for_the_kernel():
    x = torch.randn(2048, 2048, device="cuda")
    stats = measure_latency(lambda: x @ x, device="cuda", warmup=2, iters=5)
    assert stats.p50_ms > 0.01  # an unsynchronised timer would see only the launch (~microseconds)
