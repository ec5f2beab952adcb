"""The experimental ``local_adam`` hook: option checks, its moments in checkpoints, what it declares it needs.

The exchange itself is checked in two processes in test_hooks.py (plain-tensor oracle, equality with AdamW), the
strategy's check of its optimizer and device in test_strategy.py.
"""

import logging

import pytest
from torch import nn

from fusion.distributed.base import SGD_WITHOUT_MOMENTUM
from fusion.distributed.local_adam import LocalAdamConfig, LocalAdamState
from fusion.distributed.registry import make_comm_hook, state_class
from fusion.distributed.topk import TopKState


def test_bad_options_name_themselves():
    with pytest.raises(ValueError, match=r"comm_hook.beta2 must be in \[0, 1\), got 1.0"):
        LocalAdamConfig(beta2=1.0)
    with pytest.raises(ValueError, match="comm_hook.eps must be > 0"):
        LocalAdamConfig(eps=0.0)
    with pytest.raises(ValueError, match=r"comm_hook.ratio must be in \(0, 1\]"):  # top-k's checks apply too
        LocalAdamConfig(ratio=0.0)


def test_declares_sgd_without_momentum_and_cpu():
    assert state_class("local_adam").required_optimizer is SGD_WITHOUT_MOMENTUM
    assert state_class("local_adam").devices == ("cpu",)
    assert state_class("topk").required_optimizer is None and state_class("topk").devices is None


def test_moments_in_checkpoints_and_from_zero_for_a_plain_topk_state(one_rank_group, caplog):
    plain = TopKState(nn.Linear(4, 4))
    assert set(plain.state_dict()) == {"step", "counter", "residuals"}
    state, _ = make_comm_hook("local_adam", nn.Linear(4, 4), None, {"beta1": 0.8, "beta2": 0.95})
    assert isinstance(state, LocalAdamState) and state.config.ratio == 0.001
    assert set(state.state_dict()) == {"step", "counter", "residuals", "adam_moments"}
    assert [(m.beta, m.power) for m in state.moments] == [(0.8, 1), (0.95, 2)]
    with caplog.at_level(logging.WARNING, logger="fusion.distributed.local_adam"):
        state.load_state_dict(plain.state_dict())  # a checkpoint without moments: they start from zero
    assert "no Adam moments" in caplog.text
    assert all(m.state_dict() == {"means": {}, "weights": {}} for m in state.moments)
