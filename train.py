"""Train a recipe: `python train.py recipe=progressive [data.manifest=...] [trainer.max_epochs=...] [seed=...]`."""

import json

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fusion.training import train


@hydra.main(config_path="recipes", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.get("run_dir") is None:
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
    metrics = train(cfg)
    print(f"run folder: {cfg.run_dir}")
    print("test metrics: " + json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
