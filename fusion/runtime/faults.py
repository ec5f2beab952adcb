"""Distributed faults: a hung or dead rank stops the others within a bounded time, with an error that says so.

A rank that dies (SIGKILL, out of memory, lost machine) closes its sockets and the other ranks' next
collective fails at once. A rank that hangs (stopped, deadlocked, network partition) is only noticed by the
collective timeout, which torch sets to 30 minutes for gloo and 10 for NCCL; `CollectiveTimeout` shortens it
for the collectives of training while leaving the start-up rendezvous at Lightning's default (ranks that
start slowly are not failures).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch.distributed as dist
from torch.distributed.distributed_c10d import _set_pg_timeout

from fusion.errors import ConfigError, UserError


class PeerFailureError(UserError, RuntimeError):
    """Another training process (DDP rank) died or stopped answering; this one stopped instead of hanging."""


class CollectiveTimeout(L.Callback):
    """Sets the default process group's collective timeout to `seconds` once the group exists.

    Args:
        seconds: longest wait of one all-reduce/broadcast/barrier for the other ranks.
    """

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ConfigError(f"ddp_timeout_s must be positive, got {seconds}")
        self.seconds = float(seconds)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            _set_pg_timeout(timedelta(seconds=self.seconds))


PEER_FAILURE_MARKERS = ("gloo", "nccl", "timed out", "timeout", "connection reset", "connection closed",
                        "pair closure", "broken pipe")


def is_peer_failure(err: BaseException) -> bool:
    """Whether `err` is a failed collective: a backend error, a gloo/NCCL transport error or a timeout."""
    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(marker in text for marker in PEER_FAILURE_MARKERS)


@contextlib.contextmanager
def explain_peer_failures(trainer: L.Trainer, run_dir: Path):
    """Turns a failed collective of a multi-process run into a PeerFailureError that says what to do."""
    try:
        yield
    except Exception as err:
        if trainer.world_size <= 1 or not is_peer_failure(err):
            raise
        text = str(err).strip()
        summary = text.splitlines()[-1] if text else type(err).__name__
        raise PeerFailureError(
            f"rank {trainer.global_rank} of {trainer.world_size} stopped: another training process died or stopped "
            f"responding ({type(err).__name__}: {summary[:300]}). Training since the last checkpoint is lost; "
            f"resume with ckpt_path={run_dir / 'last.ckpt'} (ddp_timeout_s bounds the wait for a hung process)."
        ) from None
