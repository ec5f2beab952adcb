"""ResidualStore keeps each parameter's residual through DDP bucket rebuilds and checkpoints."""

import torch
from torch import nn

from fusion.distributed.residuals import ResidualStore


class FakeBucket:
    """The parts of ``dist.GradBucket`` the store uses."""

    def __init__(self, index: int, params: list[nn.Parameter]) -> None:
        self._index, self._params = index, params
        self._buffer = torch.zeros(sum(p.numel() for p in params))

    def index(self) -> int:
        return self._index

    def parameters(self) -> list[nn.Parameter]:
        return self._params

    def buffer(self) -> torch.Tensor:
        return self._buffer


def residual_of(layout: list[nn.Parameter], values: dict[int, torch.Tensor], ids: dict[int, int]) -> torch.Tensor:
    return torch.cat([values[ids[id(p)]] for p in layout])


def test_residuals_follow_parameters_across_layouts_and_checkpoints():
    params = [nn.Parameter(torch.zeros(n)) for n in (3, 5, 2, 4)]
    ids = {id(p): i for i, p in enumerate(params)}
    values = {i: torch.arange(p.numel(), dtype=torch.float32) + 10 * i for i, p in enumerate(params)}
    store = ResidualStore(ids)
    first = FakeBucket(0, params)  # DDP's first step: one bucket
    assert store.get(first) is None
    store.set(first, residual_of(params, values, ids))

    rebuilt = [FakeBucket(0, [params[3], params[2]]), FakeBucket(1, [params[1], params[0]])]
    for bucket in rebuilt:
        assert torch.equal(store.get(bucket), residual_of(bucket.parameters(), values, ids))
    for bucket in rebuilt:  # steady state: the very same tensors, no re-slicing
        kept = store.get(bucket)
        assert store.get(bucket) is kept
        store.set(bucket, kept + 1)
    values = {i: v + 1 for i, v in values.items()}

    saved = store.state_dict()
    assert sorted(saved) == [0, 1, 2, 3] and all(torch.equal(saved[i], values[i]) for i in saved)
    fresh = ResidualStore(ids)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.get(first), residual_of(params, values, ids))
