"""What every command shares: the recipes folder, composing a config as the command would, user-error exits."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from fusion.errors import UserError

log = logging.getLogger("fusion")

PACKAGE = Path(__file__).resolve().parents[1]


def recipes_dir() -> Path:
    """The Hydra config tree: `fusion/recipes` in an installed package, `recipes/` beside it in a source tree."""
    for candidate in (PACKAGE / "recipes", PACKAGE.parent / "recipes"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no recipes folder with config.yaml beside {PACKAGE}")


def compose_config(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """The config a command composes from `recipes/<config_name>.yaml` and command-line style overrides.

    Hydra's own settings are dropped, and `recipe_name` (taken from Hydra's choice of `recipe`) is resolved.
    """
    with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        if "recipe_name" in cfg:
            cfg.recipe_name = cfg.hydra.runtime.choices.get("recipe")
        del cfg["hydra"]
    return cfg


def route_lightning_logs_to_root() -> None:
    """Lightning's loggers print through their own handler as well; keep only the root (Hydra's) handlers, so
    every line is printed once and also lands in the job log."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def find_user_error(err: BaseException) -> UserError | None:
    """The UserError behind `err`, following the chain Hydra's instantiate wraps around constructor errors."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def reports_user_errors(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wraps a command's main: a UserError ends the process with its message and exit status 2, no traceback."""

    @functools.wraps(main)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return main(cfg)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            log.error("%s", user_error)
            sys.exit(2)

    return wrapped
