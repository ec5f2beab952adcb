"""Top-k ``local_adam``: validation, checkpoint keys, and the optimizer check of train.py's config.

The exchange itself is checked in two processes in test_hooks.py (plain-tensor oracle, equality with AdamW).
"""

import logging

import pytest
from torch import nn

from fusion.distributed.registry import make_comm_hook
from fusion.distributed.topk import TopKState
from fusion.training import build_strategy
from tests.conftest import compose_recipe

LOCAL_ADAM = ["trainer.strategy=ddp", "trainer.accelerator=cpu", "comm_hook=topk", "+comm_hook_args.ratio=0.001",
              "+comm_hook_args.local_adam=true"]


def test_bad_arguments_name_themselves(one_rank_group):
    with pytest.raises(ValueError, match="local_adam and momentum > 0 exclude each other"):
        TopKState(nn.Linear(4, 4), local_adam=True, momentum=0.9)
    with pytest.raises(ValueError, match="topk adam_eps must be > 0"):
        TopKState(nn.Linear(4, 4), local_adam=True, adam_eps=0.0)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        TopKState(nn.Linear(4, 4), local_adam=True, adam_beta2=1.0)


def test_moments_only_with_local_adam_and_in_checkpoints(one_rank_group, caplog):
    plain = TopKState(nn.Linear(4, 4))
    assert plain.adam_moments is None and "adam_moments" not in plain.state_dict()
    adam = TopKState(nn.Linear(4, 4), local_adam=True, adam_beta1=0.8, adam_beta2=0.95)
    assert set(adam.state_dict()) == {"step", "counter", "residuals", "adam_moments"}
    assert [(m.beta, m.power) for m in adam.adam_moments] == [(0.8, 1), (0.95, 2)]
    with caplog.at_level(logging.WARNING, logger="fusion.distributed.topk"):
        adam.load_state_dict(plain.state_dict())  # a checkpoint without local_adam: moments from zero
    assert "no Adam moments" in caplog.text
    assert all(m.state_dict() == {"means": {}, "weights": {}} for m in adam.adam_moments)


def test_config_needs_sgd_without_momentum(one_rank_group):
    with pytest.raises(ValueError, match=r"local_adam=true .* set model.optimizer=sgd model.momentum=0 "
                                         r"\(now model.optimizer=adamw, model.momentum=0.9\)"):
        build_strategy(compose_recipe("progressive", LOCAL_ADAM))
    with pytest.raises(ValueError, match=r"momentum=0.9 .* \(now model.optimizer=sgd, model.momentum=0.9\)"):
        build_strategy(compose_recipe("progressive", [*LOCAL_ADAM[:-1], "+comm_hook_args.momentum=0.9",
                                                      "model.optimizer=sgd"]))
    with pytest.raises(ValueError, match=r"scale_by_lr=true .* \(now model.optimizer=adamw"):
        build_strategy(compose_recipe("progressive", [*LOCAL_ADAM[:-1], "+comm_hook_args.scale_by_lr=true"]))
    cfg = compose_recipe("progressive", [*LOCAL_ADAM, "model.optimizer=sgd", "model.momentum=0"])
    strategy = build_strategy(cfg)
    state, _ = make_comm_hook(strategy.comm_hook, nn.Linear(4, 4), None, strategy.comm_hook_args)
    assert state.adam_moments is not None and state.ratio == 0.001
    with pytest.raises(ValueError, match="local_adam=true runs on the CPU"):
        build_strategy(compose_recipe("progressive", [*LOCAL_ADAM, "model.optimizer=sgd", "model.momentum=0",
                                                      "trainer.accelerator=gpu"]))
    # plain top-k (the optimizer keeps its own momentum) with AdamW stays allowed
    assert build_strategy(compose_recipe("progressive", LOCAL_ADAM[:-1])).comm_hook == "topk"
