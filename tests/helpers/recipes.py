"""Compose recipes as the commands do, and the overrides that make them train in seconds on tiny data."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fusion.commands.app import compose_config, recipes_dir

REPO = Path(__file__).resolve().parents[2]
RECIPES = recipes_dir()


def compose_recipe(recipe: str, overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Composes recipes/config.yaml with `recipe=<recipe>` and overrides, as train.py would."""
    return compose_config(config_name, [f"recipe={recipe}", *(overrides or [])])


def tiny_overrides(tiny_digits, run_dir: Path, *extra: str) -> list[str]:
    """Overrides that train a recipe on the tiny digits set into `run_dir`, quietly, on the CPU."""
    return [f"data.manifest={tiny_digits}", f"run_dir={run_dir}", "data.batch_size=16", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "trainer.log_every_n_steps=1", *extra]
