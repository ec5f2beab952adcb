"""Top-k ``selection`` argument: validation, the unchanged default, and the path from a benchmark variant to the hook."""

import importlib.util
from pathlib import Path

import pytest
from torch import nn

from fusion.distributed.registry import make_comm_hook
from fusion.distributed.strategy import CompressedDDPStrategy
from fusion.distributed.topk import TopKState
from fusion.training import build_strategy
from tests.conftest import compose_recipe

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
VARIANT = "topk0.1n=topk:ratio=0.001,warmup_steps=10,density_warmup_steps=96,selection=normalized"


def test_bad_selection_arguments_name_the_argument(one_rank_group):
    with pytest.raises(ValueError, match="topk selection must be 'magnitude' or 'normalized', got 'adam'"):
        TopKState(nn.Linear(4, 4), selection="adam")
    with pytest.raises(ValueError, match="topk selection must be"):
        make_comm_hook("topk", nn.Linear(4, 4), None, {"selection": "Normalized"})
    with pytest.raises(ValueError, match=r"topk selection_beta must be in \[0, 1\)"):
        TopKState(nn.Linear(4, 4), selection="normalized", selection_beta=1.0)
    with pytest.raises(ValueError, match="topk selection_eps must be > 0"):
        TopKState(nn.Linear(4, 4), selection="normalized", selection_eps=0.0)


def test_magnitude_default_keeps_no_statistic(one_rank_group):
    state = TopKState(nn.Linear(4, 4))
    assert state.selection == "magnitude" and state.squared_means is None
    assert set(state.state_dict()) == {"step", "counter", "residuals"}  # checkpoint format unchanged
    normalized = TopKState(nn.Linear(4, 4), selection="normalized")
    assert set(normalized.state_dict()) == {"step", "counter", "residuals", "squared_gradient_means"}
    normalized.load_state_dict(state.state_dict())  # a magnitude checkpoint: the statistic starts from zero
    assert normalized.squared_means.state_dict() == {"means": {}, "weights": {}}


def test_benchmark_variant_reaches_the_hook_state(one_rank_group):
    spec = importlib.util.spec_from_file_location("ddp_accuracy", BENCHMARKS / "ddp_accuracy.py")
    ddp_accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ddp_accuracy)
    variant = ddp_accuracy.parse_variant(VARIANT)
    assert variant.label == "topk0.1n" and variant.hook == "topk"
    overrides = variant.overrides()
    assert "+comm_hook_args.selection=normalized" in overrides

    cfg = compose_recipe("progressive", ["trainer.strategy=ddp", "trainer.accelerator=cpu", *overrides])
    strategy = build_strategy(cfg)
    assert isinstance(strategy, CompressedDDPStrategy)
    assert strategy.comm_hook_args == {"ratio": 0.001, "warmup_steps": 10, "density_warmup_steps": 96,
                                       "selection": "normalized"}
    state, _ = make_comm_hook(strategy.comm_hook, nn.Linear(4, 4), None, strategy.comm_hook_args)
    assert type(state.selection) is str and state.selection == "normalized"
    assert state.squared_means is not None and state.squared_means.beta == 0.99
    assert state.ratio == 0.001 and state.warmup_steps == 10 and state.density_warmup_steps == 96
