"""Shared fixtures: tiny generated data, the real-data folder, and Hydra composition of recipes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory) -> Path:
    """A tiny built-in digits set (manifest.csv + files), generated once per test session."""
    from fusion.data.builtin_digits import ensure_builtin_digits

    return ensure_builtin_digits(tmp_path_factory.mktemp("digits") / "digits", n_train=48, n_val=16, n_test=16)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/data (or $FUSION_REALDATA); skips the test when absent."""
    path = Path(os.environ.get("FUSION_REALDATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found (set FUSION_REALDATA)")
    return path


def compose_recipe(recipe: str, overrides: list[str] | None = None):
    """Composes recipes/config.yaml with `recipe=<recipe>` and overrides, as train.py would."""
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose("config", overrides=[f"recipe={recipe}", *(overrides or [])])
