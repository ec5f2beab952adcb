"""Top-k density warm-up: the sent fraction falls 4x per stage from 25 % to the target ratio."""

import pytest
from torch import nn

from fusion.distributed.topk import TopKState


def test_density_warmup_stages_then_ratio(one_rank_group):
    state = TopKState(nn.Linear(4, 4), ratio=0.001, warmup_steps=10, density_warmup_steps=8)
    assert state.warmup_densities == [0.25, 0.0625, 0.015625, 0.00390625]
    seen = []
    for step in range(22):
        state.step = step
        seen.append(state.density())
    assert seen[:10] == [0.001] * 10  # dense steps do not use it
    assert seen[10:18] == [0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.00390625, 0.00390625]
    assert seen[18:] == [0.001] * 4
    state.step = 12
    assert state.k(10_000) == 625 and state.k(3) == 1


def test_no_density_warmup_uses_ratio_and_rejects_negative(one_rank_group):
    state = TopKState(nn.Linear(4, 4), ratio=0.01)
    assert state.density() == 0.01 and state.k(1000) == 10
    assert TopKState(nn.Linear(4, 4), ratio=0.5, density_warmup_steps=5).warmup_densities == []
    with pytest.raises(ValueError, match="density_warmup_steps"):
        TopKState(nn.Linear(4, 4), density_warmup_steps=-1)
