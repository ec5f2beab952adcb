"""Evaluate finished runs: `python evaluate.py run=<run folder>` (several: `run=[a,b,c]`); see recipes/evaluate.yaml."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion.commands.app import recipes_dir, reports_user_errors, route_lightning_logs_to_root
from fusion.errors import ConfigError

log = logging.getLogger("fusion")


def run_folders(run: str | list[str] | ListConfig) -> list[str]:
    """`run=` as a list of paths (one path, a list, or a comma-separated string)."""
    items = list(run) if isinstance(run, list | ListConfig) else str(run).split(",")
    paths = [str(item).strip() for item in items if str(item).strip()]
    if not paths:
        raise ConfigError("run= needs a run folder (or a list of them)")
    return paths


def is_sync_run(path: str) -> bool:
    """True if the run folder's (or checkpoint's folder's) config.yaml trained the sync recipe."""
    folder = Path(path).expanduser()
    config = (folder if folder.is_dir() else folder.parent) / "config.yaml"
    if not config.is_file():
        return False
    return "SyncDataModule" in str(OmegaConf.load(config).get("data", {}).get("_target_", ""))


@reports_user_errors
def run(cfg: DictConfig) -> None:
    """Evaluates `cfg.run` as recipes/evaluate.yaml describes."""
    route_lightning_logs_to_root()
    paths = run_folders(cfg.run)
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings["data"] = {key: value for key, value in settings["data"].items() if value is not None}
    if any(is_sync_run(path) for path in paths):
        if len(paths) != 1:
            raise ConfigError("a sync run is evaluated on its own: run=<sync run folder>")
        from fusion.eval.sync_eval import evaluate_sync

        evaluate_sync(settings | {"run": paths[0], "device": (settings["device"] or ["cpu"])[0]})
        return
    from fusion.eval.sweep import EvalSettings, run_sweep

    options = {key: value for key, value in settings.items() if key not in ("run", "device") and value is not None}
    sweep = EvalSettings(run=paths, **options)
    if settings["device"]:
        sweep.devices = list(settings["device"])
    run_sweep(sweep, log=log.info)


@hydra.main(config_path=str(recipes_dir()), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
