"""EpochMeans: count-weighted means per name, exact over processes whose names differ."""

import json

import torch

from fusion.tasks.epoch_means import EpochMeans
from tests.helpers.spawn import run_gloo

# per rank: (name, batch mean, count) in the order they arrive; "audio" appears on rank 1 only, "empty" with
# count 0 on rank 0 only (it adds nothing, so it is no name at all)
ADDS = {
    0: [("loss", 2.0, 4), ("image", 0.5, 4), ("loss", 1.0, 2), ("empty", 7.0, 0)],
    1: [("loss", 4.0, 3), ("image", 1.0, 1), ("audio", 0.25, 8)],
}


def test_weighted_mean_and_reset():
    means = EpochMeans()
    for name, value, count in ADDS[0]:
        means.add(name, torch.tensor(value), count)
    assert means.compute(torch.device("cpu")) == {"loss": (2.0 * 4 + 1.0 * 2) / 6, "image": 0.5}
    assert means.compute(torch.device("cpu")) == {}  # starts over after each epoch


def reduce_on_every_rank(rank: int, world: int, out_dir: str) -> None:
    means = EpochMeans()
    for name, value, count in ADDS[rank]:
        means.add(name, torch.tensor(value, dtype=torch.float32), count)
    with open(f"{out_dir}/{rank}.json", "w") as handle:
        json.dump(means.compute(torch.device("cpu")), handle)


def test_two_processes_agree_on_the_whole_split(tmp_path):
    run_gloo(reduce_on_every_rank, 2, str(tmp_path), timeout=60)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert results[0] == results[1]  # the same numbers everywhere, over the union of names
    assert results[0] == {"loss": (2.0 * 4 + 1.0 * 2 + 4.0 * 3) / 9, "image": (0.5 * 4 + 1.0 * 1) / 5, "audio": 0.25}
