"""Distributed faults with 2 CPU processes (gloo): when one rank dies or hangs, the other stops within a
bounded time with a PeerFailureError that says what happened and how to resume, instead of hanging."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fusion.runtime.faults import PeerFailureError, explain_peer_failures, is_peer_failure
from tests.helpers.recipes import REPO


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hang_worker(rank: int, port: int, timeout_s: float, results) -> None:
    """Rank 1 joins the group, then stops answering; rank 0 all-reduces and must give up after timeout_s."""
    import torch.distributed as dist

    from fusion.runtime.faults import CollectiveTimeout

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    CollectiveTimeout(timeout_s).setup(None, None, "fit")
    dist.barrier()
    if rank == 1:
        time.sleep(600)  # hung: alive, sockets open, never calls the collective
        return
    start = time.monotonic()
    trainer = SimpleNamespace(world_size=2, global_rank=0)
    try:
        with explain_peer_failures(trainer, Path("/runs/x")):
            dist.all_reduce(torch.ones(4))
        results.put(("no error", time.monotonic() - start))
    except PeerFailureError as err:
        results.put((str(err), time.monotonic() - start))
    except Exception as err:  # anything else is a failure of the test
        results.put((f"unexpected {type(err).__name__}: {err}", time.monotonic() - start))


def test_a_hung_rank_is_detected_by_the_collective_timeout():
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    workers = [context.Process(target=hang_worker, args=(r, port, 3.0, results)) for r in (0, 1)]
    for w in workers:
        w.start()
    try:
        message, waited = results.get(timeout=240)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join(timeout=30)
    assert message.startswith("rank 0 of 2 stopped: another training process died or stopped responding"), message
    assert "resume with ckpt_path=/runs/x/last.ckpt" in message
    assert 2.5 <= waited < 60, waited  # the 3 s timeout, not torch's default 30 minutes


def test_only_communication_failures_are_rewritten():
    trainer = SimpleNamespace(world_size=2, global_rank=1)
    with pytest.raises(ValueError, match="a bug"):
        with explain_peer_failures(trainer, Path("/r")):
            raise ValueError("a bug in a training step")
    assert is_peer_failure(RuntimeError("[gloo/transport/tcp/pair.cc:538] Read error: Connection reset by peer"))
    assert is_peer_failure(RuntimeError("Application timeout caused pair closure"))
    assert not is_peer_failure(RuntimeError("CUDA out of memory"))
    single = SimpleNamespace(world_size=1, global_rank=0)
    with pytest.raises(RuntimeError, match="Connection reset"):
        with explain_peer_failures(single, Path("/r")):
            raise RuntimeError("Connection reset by peer")


def test_killed_rank_stops_the_survivor_of_a_real_ddp_training(tiny_digits, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tests.reliability.run_training", "late", "--fault", "kill", "--fault-rank", "1",
               "--fault-after-step", "2", f"data.manifest={tiny_digits}", "data.batch_size=8", f"run_dir={run}",
               "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=50",
               "trainer.enable_progress_bar=false", "++ddp_timeout_s=60",
               # forked DataLoader workers of the killed rank keep its sockets open, and Lightning's process
               # observer then ends the run before the survivor's collective fails (docs/reliability.md)
               "data.num_workers=0"]
    # own session: every process of the run (the launcher starts rank 1 as a child) can be cleaned up by group
    survivor = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        output, _ = survivor.communicate(timeout=540)
        exited = time.time()
    finally:
        if survivor.poll() is None:
            os.killpg(survivor.pid, signal.SIGKILL)
            survivor.wait()
        else:
            try:
                os.killpg(survivor.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = output.decode(errors="replace")
    assert (run / "fault_pid.txt").exists(), text[-3000:]
    assert survivor.returncode != 0, text[-3000:]
    assert "PeerFailureError: rank 0 of 2 stopped: another training process died or stopped responding" in text, text[-3000:]
    assert f"resume with ckpt_path={run / 'last.ckpt'}" in text
    stopped_after = exited - (run / "fault_pid.txt").stat().st_mtime
    print(f"survivor stopped {stopped_after:.1f} s after rank 1 was killed")
    assert stopped_after < 120  # a dead peer is noticed at the next collective, without waiting for any timeout
    assert not (run / "metrics.json").exists()
