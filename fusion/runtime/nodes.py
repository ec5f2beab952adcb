"""Multi-node runs: every process agrees on global rank 0's run folder."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.strategies import ParallelStrategy

# cluster environments in which Lightning does not start the processes itself (torchrun, srun, jsrun, mpirun)
EXTERNAL_LAUNCHERS = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)


def shared_run_dir(run_dir: str, trainer_kwargs: dict[str, Any]) -> str:
    """Global rank 0's `run_dir`, on every process of a run.

    torchrun or srun start the processes of each node separately, and each node picks its own default run
    folder (Hydra's timestamp may differ by a second); processes that Lightning starts itself are given the
    parent's folder. With external launchers this joins the process group as Lightning's fit would (same
    environment, backend and timeout, from the `lightning.Trainer` keyword arguments `trainer_kwargs`; fit then
    reuses the group) and takes rank 0's folder.
    """
    if not any(environment.detect() for environment in EXTERNAL_LAUNCHERS):
        return run_dir
    device_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = device_info.level
    device_info.setLevel(logging.WARNING)  # the real Trainer reports the devices below
    try:
        probe = L.Trainer(**trainer_kwargs | {"logger": False, "enable_checkpointing": False})
    finally:
        device_info.setLevel(level)
    strategy = probe.strategy
    if (probe.world_size <= 1 or not isinstance(strategy, ParallelStrategy)
            or not strategy.cluster_environment.creates_processes_externally):
        return run_dir
    strategy.setup_environment()
    return strategy.broadcast(run_dir, src=0)
