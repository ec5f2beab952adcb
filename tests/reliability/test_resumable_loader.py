"""The resumable training loader: seeded shuffles per epoch, a restorable position, augmentation that depends
only on (seed, epoch, index), and RNG states that survive a weights-only checkpoint round trip."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fusion.runtime.resume import (
    EpochSampler,
    ResumableDataLoader,
    SeededItems,
    capture_rng_states,
    item_seed,
    restore_rng_states,
    resumable_loader,
)


class NoisyItems(Dataset):
    """Item i = (i, a random draw from the global torch, numpy and python generators)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()), random.random()])


def epoch_batches(loader: DataLoader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_resumable_loader_replays_the_rest_of_an_interrupted_epoch():
    plain = DataLoader(NoisyItems(), batch_size=3, shuffle=True)
    loader = resumable_loader(plain, seed=7)
    assert isinstance(loader, ResumableDataLoader) and len(loader) == len(plain) == 4
    full = [epoch_batches(loader, e) for e in range(3)]
    orders = [torch.cat(b)[:, 0].tolist() for b in full]
    assert all(sorted(o) == list(range(10)) for o in orders) and orders[0] != orders[1]

    # interrupted after 2 batches of epoch 1: a fresh loader (new process) continues with batch 3 of epoch 1
    interrupted = resumable_loader(DataLoader(NoisyItems(), batch_size=3, shuffle=True), seed=7)
    interrupted.sampler.set_epoch(1)
    iterator = iter(interrupted)
    next(iterator), next(iterator)
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 2)

    fresh = resumable_loader(DataLoader(NoisyItems(), batch_size=3, shuffle=True), seed=7)
    torch.manual_seed(123)  # the new process's global generators are somewhere else entirely
    fresh.load_state_dict(state)
    rest = epoch_batches(fresh, 1)
    assert len(rest) == 2
    for got, want in zip(rest, full[1][2:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the following epoch is whole again and identical to the uninterrupted one
    for got, want in zip(epoch_batches(fresh, 2), full[2], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_items_do_not_depend_on_workers_or_on_the_callers_random_state():
    items = SeededItems(NoisyItems(), seed=3)
    torch.manual_seed(0)
    a = items[(2, 5)]
    before = torch.get_rng_state()
    torch.manual_seed(999)
    np.random.seed(1)
    b = items[(2, 5)]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(items[(3, 5)][1:], a[1:])  # another epoch draws other augmentation
    torch.set_rng_state(before)
    drawn = torch.rand(3)
    torch.set_rng_state(before)
    items[(0, 0)]
    torch.testing.assert_close(torch.rand(3), drawn)  # the caller's stream is untouched

    single = list(resumable_loader(DataLoader(NoisyItems(), batch_size=4, shuffle=True), seed=1))
    workers = list(resumable_loader(DataLoader(NoisyItems(), batch_size=4, shuffle=True, num_workers=2), seed=1))
    for x, y in zip(single, workers, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_ranks_get_disjoint_shares_that_cover_the_epoch():
    shares = [EpochSampler(NoisyItems(), shuffle=True, seed=0) for _ in range(2)]
    for rank, sampler in enumerate(shares):
        sampler.num_replicas, sampler.rank = 2, rank
        sampler.num_samples, sampler.total_size = 5, 10
    keys = [list(s) for s in shares]
    assert sorted(i for k in keys for _, i in k) == list(range(10))
    assert all(epoch == 0 for k in keys for epoch, _ in k)


def test_a_changed_batch_size_restarts_the_epoch_with_a_warning():
    loader = resumable_loader(DataLoader(NoisyItems(), batch_size=3, shuffle=True), seed=0)
    other = resumable_loader(DataLoader(NoisyItems(), batch_size=5, shuffle=True), seed=0)
    with pytest.warns(UserWarning, match="restarts from its first batch"):
        other.load_state_dict(loader.state_dict() | {"batches": 1})
    assert len(list(other)) == 2


def test_unsupported_loaders_are_left_alone_with_a_warning():
    with pytest.warns(UserWarning, match="not resumable"):
        loader = DataLoader(NoisyItems(), batch_size=None)
        assert resumable_loader(loader, seed=0) is loader


def test_rng_states_round_trip_through_a_weights_only_checkpoint():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    np.random.randn()  # numpy keeps a cached gaussian: it must survive too
    buffer = io.BytesIO()
    torch.save({"rng": capture_rng_states()}, buffer)
    want = (torch.rand(4), np.random.randn(3), [random.random() for _ in range(3)])
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["rng"]
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng_states(state)
    got = (torch.rand(4), np.random.randn(3), [random.random() for _ in range(3)])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


def test_item_seeds_differ_across_epochs_and_indices():
    seeds = {item_seed(0, e, i) for e in range(20) for i in range(500)}
    assert len(seeds) == 20 * 500
    assert all(0 <= s < 2**63 for s in seeds)
