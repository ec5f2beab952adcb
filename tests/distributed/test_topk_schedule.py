"""Top-k options and density warm-up: checks in one place, and the sent fraction falling 4x per stage."""

import dataclasses

import pytest
from torch import nn

from fusion.distributed.topk import TopKConfig, TopKState


def test_density_warmup_stages_then_ratio(one_rank_group):
    state = TopKState(nn.Linear(4, 4), config=TopKConfig(ratio=0.001, warmup_steps=10, density_warmup_steps=8))
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


def test_no_density_warmup_uses_ratio(one_rank_group):
    state = TopKState(nn.Linear(4, 4), config=TopKConfig(ratio=0.01, warmup_steps=0, density_warmup_steps=0))
    assert state.density() == 0.01 and state.k(1000) == 10
    wide = TopKState(nn.Linear(4, 4), config=TopKConfig(ratio=0.5, density_warmup_steps=5))
    assert wide.warmup_densities == []


def test_defaults_are_the_recommended_configuration():
    assert dataclasses.asdict(TopKConfig()) == {"ratio": 0.01, "warmup_steps": 10, "density_warmup_steps": 48,
                                                "value_dtype": "fp16", "granularity": "bucket"}


@pytest.mark.parametrize(("options", "message"), [
    ({"ratio": 0.0}, r"comm_hook.ratio must be in \(0, 1\], got 0.0"),
    ({"ratio": 1.5}, r"comm_hook.ratio must be in \(0, 1\]"),
    ({"warmup_steps": -1}, "comm_hook.warmup_steps must be >= 0"),
    ({"density_warmup_steps": -1}, "comm_hook.density_warmup_steps must be >= 0"),
    ({"value_dtype": "int8"}, r"comm_hook.value_dtype must be one of \['bf16', 'fp16', 'fp32', 'fp64'\], got 'int8'"),
    ({"granularity": "layer"}, "comm_hook.granularity must be 'bucket' or 'tensor', got 'layer'"),
])
def test_bad_options_name_themselves(options, message):
    with pytest.raises(ValueError, match=message):
        TopKConfig(**options)
