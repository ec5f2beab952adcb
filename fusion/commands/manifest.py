"""Build a manifest from folders of files: `python -m fusion.commands.manifest builder=pair_digits builder.<key>=...`.

The builders are the `builder/` group of recipes/manifest.yaml; each is a function that writes the manifest and
returns the number of rows per split.
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fusion.commands.app import recipes_dir, reports_user_errors

log = logging.getLogger("fusion")


@reports_user_errors
def run(cfg: DictConfig) -> dict[str, int]:
    """Calls the chosen builder with its settings; returns rows per split."""
    counts = instantiate(cfg.builder)
    log.info("wrote %s: %s", cfg.builder.out, ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return counts


@hydra.main(config_path=str(recipes_dir()), config_name="manifest", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
