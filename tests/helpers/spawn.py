"""Run a function in several gloo processes with a hard timeout (a failure never hangs the suite)."""

import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(fn: Callable, world: int, *args, timeout: float = 120.0) -> None:
    """Runs ``fn(rank, world, *args)`` in ``world`` spawned processes joined in one gloo group."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    context = mp.start_processes(_entry, args=(fn, world, free_port(), args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"distributed workers did not finish within {timeout} s")


def rank_results(fn: Callable, world: int, out_dir: str, timeout: float = 120.0) -> list:
    """Runs ``fn(rank, world, out_dir)`` as :func:`run_gloo` does; returns what each rank saved as
    ``<out_dir>/<rank>.pt``, in rank order."""
    run_gloo(fn, world, out_dir, timeout=timeout)
    return [torch.load(f"{out_dir}/{rank}.pt", weights_only=False) for rank in range(world)]
