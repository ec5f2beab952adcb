import os

import pytest

from fusion.data.worker_pool import process_pool, results


def _no_setup() -> None:
    pass


def _square_or_die(x: int) -> int:
    if x == 3:
        os._exit(1)  # a worker killed mid-task, as by the OOM killer or a crash in a native decoder
    return x * x


def test_pool_results_come_back_in_order():
    with process_pool(2, _no_setup, ()) as pool:
        assert list(results(pool.map(_square_or_die, [0, 1, 2]), "squaring")) == [0, 1, 4]


def test_a_dead_worker_is_an_error_not_a_hang():
    with process_pool(2, _no_setup, ()) as pool, pytest.raises(RuntimeError, match="died while squaring.*one=1"):
        list(results(pool.map(_square_or_die, range(8)), "squaring", "one=1"))
