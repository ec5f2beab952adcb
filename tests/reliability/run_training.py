"""Runs `train(cfg)` in its own process for the fault tests; can inject a fault into one rank after a step.

Usage: python -m tests.reliability.run_training <recipe> [--fault kill|stop] [--fault-after-step N]
       [--fault-rank R] [--threads T] [hydra overrides ...]

`kill` sends SIGKILL to the process (after any checkpoint write still running has finished, so the newest
complete checkpoint on disk is the last one written before step N); `stop` sends SIGSTOP (a hung rank).
The faulty process writes its pid to <run_dir>/fault_pid.txt first, so a test can clean up a stopped one.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import lightning as L
import torch

import fusion.training as training
from tests.helpers.recipes import compose_recipe


class FaultAfterStep(L.Callback):
    """Sends `sig` to this process once `global_step` reaches `step` on rank `rank` (no cleanup runs)."""

    def __init__(self, step: int, sig: int, rank: int, run_dir: Path):
        self.step, self.sig, self.rank, self.run_dir = step, sig, rank, run_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and trainer.global_rank == self.rank:
            trainer.strategy.checkpoint_io.wait()
            (self.run_dir / "fault_pid.txt").write_text(str(os.getpid()))
            os.kill(os.getpid(), self.sig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--fault", choices=["kill", "stop"], default=None)
    parser.add_argument("--fault-after-step", type=int, default=1)
    parser.add_argument("--fault-rank", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    cfg = compose_recipe(args.recipe, overrides)
    if args.fault is not None:
        sig = signal.SIGKILL if args.fault == "kill" else signal.SIGSTOP
        fault = FaultAfterStep(args.fault_after_step, sig, args.fault_rank, Path(cfg.run_dir))
        build = training.build_callbacks
        training.build_callbacks = lambda cfg: [fault, *build(cfg)]
    metrics = training.train(cfg)
    print("metrics", metrics)


if __name__ == "__main__":
    main()
