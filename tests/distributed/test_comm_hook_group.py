"""The Hydra group recipes/comm_hook/: one file per registered hook whose options mirror the hook's signature,
composed into what build_strategy takes (``comm_hook=topk comm_hook.ratio=0.01``)."""

import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from fusion.distributed.registry import HOOK_NAMES, hook_defaults
from fusion.distributed.strategy import CompressedDDPStrategy, build_strategy

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GROUP = RECIPES / "comm_hook"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    """A root config holding only the group (the project's config.yaml lists it among its defaults)."""
    root = tmp_path_factory.mktemp("recipes")
    shutil.copytree(GROUP, root / "comm_hook")
    (root / "config.yaml").write_text("defaults:\n  - comm_hook: none\n  - _self_\n")
    return root


def composed(config_dir: Path, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides).comm_hook, resolve=True)


def test_one_file_per_registered_hook():
    assert sorted(path.stem for path in GROUP.glob("*.yaml")) == sorted(["none", *HOOK_NAMES])
    assert yaml.safe_load((GROUP / "none.yaml").read_text()) == {"name": "none"}


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_file_mirrors_the_hook_signature(name):
    options = yaml.safe_load((GROUP / f"{name}.yaml").read_text())
    assert options.pop("name") == name
    assert list(options) == list(hook_defaults(name))  # same options, same order
    assert options == hook_defaults(name)  # same defaults


def test_composed_group_builds_the_strategy(config_dir):
    assert build_strategy(composed(config_dir, []), "ddp") == "ddp"  # comm_hook: none by default
    hook = composed(config_dir, ["comm_hook=topk", "comm_hook.ratio=0.001"])
    assert hook == {"name": "topk", **hook_defaults("topk"), "ratio": 0.001}
    strategy = build_strategy(hook, "ddp")
    assert isinstance(strategy, CompressedDDPStrategy) and strategy.comm_hook == "topk"
    assert strategy.comm_hook_args == hook_defaults("topk") | {"ratio": 0.001}
    with pytest.raises(ConfigCompositionException, match="rato"):  # a misspelt option stops at composition
        composed(config_dir, ["comm_hook=topk", "comm_hook.rato=0.1"])


def test_unknown_hook_stops_at_composition_naming_the_hooks(config_dir):
    for name in ("int4", "local_adam"):  # local_adam: removed
        with pytest.raises(ConfigCompositionException, match=rf"Could not find 'comm_hook/{name}'") as error:
            composed(config_dir, [f"comm_hook={name}"])
        assert all(f"\t{hook}\n" in str(error.value) for hook in HOOK_NAMES)  # the available options


def test_project_config_lists_the_group():
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = compose("config", overrides=["comm_hook=int8", "comm_hook.block_size=64"])
    assert OmegaConf.to_container(cfg.comm_hook) == {"name": "int8", **hook_defaults("int8"), "block_size": 64}
