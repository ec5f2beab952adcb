"""Top-k ``momentum`` (momentum correction): validation, checkpoint keys, and a benchmark variant reaching hook + optimizer."""

import importlib.util
import logging
from pathlib import Path

import pytest
from hydra.utils import instantiate
from torch import nn

from fusion.distributed.registry import make_comm_hook
from fusion.distributed.strategy import CompressedDDPStrategy
from fusion.distributed.topk import TopKState
from fusion.training import build_strategy
from tests.conftest import compose_recipe

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
VARIANT = ("sgdtopk0.1mc=topk:ratio=0.001,warmup_steps=10,density_warmup_steps=96,momentum=0.9;"
           "model.optimizer=sgd;model.momentum=0;model.lr=0.1")


def test_bad_momentum_names_the_argument(one_rank_group):
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"topk momentum must be in \[0, 1\)"):
            TopKState(nn.Linear(4, 4), momentum=bad)


def test_velocities_only_with_momentum_and_in_checkpoints(one_rank_group, caplog):
    plain = TopKState(nn.Linear(4, 4), momentum=0.0)
    assert plain.velocities is None and set(plain.state_dict()) == {"step", "counter", "residuals"}
    corrected = TopKState(nn.Linear(4, 4), momentum=0.9)
    assert set(corrected.state_dict()) == {"step", "counter", "residuals", "velocities"}
    with caplog.at_level(logging.WARNING, logger="fusion.distributed.topk"):
        corrected.load_state_dict(plain.state_dict())  # a checkpoint without momentum: velocities from zero
    assert "no velocities" in caplog.text
    assert corrected.velocities.state_dict() == {}


def test_benchmark_variant_reaches_hook_and_optimizer(one_rank_group):
    spec = importlib.util.spec_from_file_location("ddp_accuracy", BENCHMARKS / "ddp_accuracy.py")
    ddp_accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ddp_accuracy)
    variant = ddp_accuracy.parse_variant(VARIANT)
    assert variant.label == "sgdtopk0.1mc" and variant.extra == ["model.optimizer=sgd", "model.momentum=0",
                                                                 "model.lr=0.1"]
    assert variant.describe() == ("ratio=0.001,warmup_steps=10,density_warmup_steps=96,momentum=0.9; "
                                  "model.optimizer=sgd; model.momentum=0; model.lr=0.1")
    old = ddp_accuracy.parse_variant("topk1=topk:ratio=0.01,warmup_steps=10")  # the syntax without overrides
    assert old.extra == [] and old.args == {"ratio": "0.01", "warmup_steps": "10"} and old.describe() == "ratio=0.01,warmup_steps=10"
    assert ddp_accuracy.parse_variant("none;model.lr=0.1").label == "none-model.lr0.1"
    with pytest.raises(ValueError, match="empty override"):
        ddp_accuracy.parse_variant("none;;model.lr=0.1")

    cfg = compose_recipe("progressive", ["trainer.strategy=ddp", "trainer.accelerator=cpu", *variant.overrides()])
    assert (cfg.model.optimizer, cfg.model.momentum, cfg.model.lr) == ("sgd", 0, 0.1)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, CompressedDDPStrategy)
    state, _ = make_comm_hook(strategy.comm_hook, nn.Linear(4, 4), None, strategy.comm_hook_args)
    assert state.momentum == 0.9 and state.velocities is not None and state.ratio == 0.001
    task = instantiate(cfg.model, data_spec={"modalities": ["image", "audio", "text"], "num_classes": 10,
                                             "classes": list(range(10))}, _recursive_=False, _convert_="all")
    assert task.hparams.optimizer == "sgd" and task.hparams.momentum == 0
