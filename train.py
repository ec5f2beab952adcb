"""Train a recipe: `python train.py recipe=progressive [data.manifest=...] [trainer.max_epochs=...] [seed=...]`."""

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fusion.training import train


def remove_unused_output_dir(output_dir: Path, log_name: str) -> None:
    """Removes Hydra's folder of this process when the run went to another one and it holds only Hydra's empty log."""
    log = output_dir / log_name
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()
    if output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()


@hydra.main(config_path="recipes", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("run_dir") is None:
        with open_dict(cfg):
            # a resumed run continues in its own folder, so best.ckpt selection carries on
            resumed_from = Path(cfg.ckpt_path).expanduser().parent if cfg.get("ckpt_path") else None
            cfg.run_dir = str(resumed_from) if resumed_from else str(output_dir)
    own_default = cfg.run_dir == str(output_dir)
    metrics = train(cfg)  # sets cfg.run_dir to rank 0's folder on every node of a multi-node run
    if own_default and Path(cfg.run_dir).resolve() != output_dir.resolve():
        remove_unused_output_dir(output_dir, f"{HydraConfig.get().job.name}.log")
    print(f"run folder: {cfg.run_dir}")
    print("test metrics: " + json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
