"""Export a finished run: `python export.py run=<run folder> format=both out=<folder>`; see recipes/export.yaml."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fusion.commands.app import recipes_dir, reports_user_errors, route_lightning_logs_to_root
from fusion.errors import ConfigError

log = logging.getLogger("fusion")


@reports_user_errors
def run(cfg: DictConfig) -> dict:
    """Writes the export folder; returns its config.json content."""
    from fusion.eval.run_folder import load_run
    from fusion.inference.export_folder import FORMATS, export_model
    from fusion.inference.loading import is_sync_run
    from fusion.inference.preprocessing import Preprocessing

    route_lightning_logs_to_root()
    if str(cfg.format) not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got '{cfg.format}'")
    folder = Path(cfg.run).expanduser()
    if (folder / "config.yaml").is_file() and is_sync_run(folder):
        raise ConfigError("export.py exports classification runs; a sync run predicts with predict.py video=...")
    run = load_run(folder)
    spec = run.data_spec
    prep = Preprocessing.from_run_config(run.config, spec["modalities"])
    out = Path(cfg.out).expanduser()
    config = export_model(run.model, dict(run.task.hparams), prep, list(spec["classes"]), run.fusion, out,
                          str(cfg.format), bool(cfg.get("check", True)))
    for name, info in config["files"].items():
        log.info("wrote %s (%.1f MB, sha256 %s...)", out / name, info["bytes"] / 1e6, info["sha256"][:12])
    if "onnx_check" in config:
        worst = max(item["max_abs_logit_diff"] for item in config["onnx_check"].values())
        same = all(item["same_predictions"] for item in config["onnx_check"].values())
        log.info("ONNX Runtime vs PyTorch over %d modality subsets: max |logit diff| %.2e, same predictions: %s",
                 len(config["onnx_check"]), worst, same)
    log.info("export folder: %s (load with fusion.load(%s))", out, json.dumps(str(out)))
    return config


@hydra.main(config_path=str(recipes_dir()), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
