"""Train a recipe: `python train.py recipe=progressive [data.manifest=...] [trainer.max_epochs=...] [seed=...]`."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fusion.commands.app import recipes_dir, reports_user_errors, route_lightning_logs_to_root

log = logging.getLogger("fusion")


def move_log_to_run_dir(output_dir: Path, log_name: str, run_dir: Path) -> None:
    """When the run went to another folder than Hydra's (`run_dir=`, a resumed run's, rank 0's on another node),
    moves this process's job log there as `<job>.<host>-<pid>.log` and removes Hydra's folder if nothing else is in
    it."""
    log_file = output_dir / log_name
    if log_file.is_file():
        if log_file.stat().st_size == 0:
            log_file.unlink()
        else:
            try:
                log_file.rename(run_dir / f"{log_file.stem}.{socket.gethostname()}-{os.getpid()}.log")
            except OSError:  # another file system: the log stays where it is
                return
    if output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()


@reports_user_errors
def run(cfg: DictConfig) -> dict[str, float]:
    """Trains `cfg` in its run folder (Hydra's, or the resumed checkpoint's); returns the test metrics."""
    from fusion.training import train

    route_lightning_logs_to_root()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with open_dict(cfg):
        cfg.recipe_name = HydraConfig.get().runtime.choices.get("recipe")
        if cfg.get("run_dir") is None:
            # a resumed run continues in its own folder, so best.ckpt selection carries on
            resumed_from = Path(cfg.ckpt_path).expanduser().parent if cfg.get("ckpt_path") else None
            cfg.run_dir = str(resumed_from) if resumed_from else str(output_dir)
    metrics = train(cfg)  # sets cfg.run_dir to rank 0's folder on every node of a multi-node run
    log.info("run folder: %s", cfg.run_dir)
    log.info("test metrics: %s", json.dumps(metrics, sort_keys=True))
    if Path(cfg.run_dir).resolve() != output_dir.resolve():  # run_dir=, a resumed run, another node's folder
        move_log_to_run_dir(output_dir, f"{HydraConfig.get().job.name}.log", Path(cfg.run_dir))
    return metrics


@hydra.main(config_path=str(recipes_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
