"""Train a recipe: `python train.py recipe=progressive [data.manifest=...] [trainer.max_epochs=...] [seed=...]`."""

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fusion.training import train


@hydra.main(config_path="recipes", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.get("run_dir") is None:
        with open_dict(cfg):
            # a resumed run continues in its own folder, so best.ckpt selection carries on
            resumed_from = Path(cfg.ckpt_path).expanduser().parent if cfg.get("ckpt_path") else None
            cfg.run_dir = str(resumed_from) if resumed_from else HydraConfig.get().runtime.output_dir
    metrics = train(cfg)
    print(f"run folder: {cfg.run_dir}")
    print("test metrics: " + json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
