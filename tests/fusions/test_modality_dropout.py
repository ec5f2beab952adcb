from collections import Counter

import pytest
import torch

from fusion.fusions.modality_dropout import modality_dropout


def _patterns(out: dict[str, torch.Tensor]) -> list[tuple[bool, ...]]:
    return [tuple(row) for row in torch.stack([out[m] for m in sorted(out)], dim=1).tolist()]


def test_every_proper_subset_is_drawn_equally_often():
    n = 60000
    mask = {m: torch.ones(n, dtype=torch.bool) for m in ("audio", "image", "text")}
    out = modality_dropout(mask, p=0.6, generator=torch.Generator().manual_seed(0))
    counts = Counter(_patterns(out))
    assert counts[(True, True, True)] / n == pytest.approx(0.4, abs=0.01)
    subsets = [pattern for pattern in counts if pattern != (True, True, True)]
    assert len(subsets) == 6 and (False, False, False) not in counts  # 2^3 - 2 proper non-empty subsets
    for pattern in subsets:
        assert counts[pattern] / n == pytest.approx(0.1, abs=0.01), pattern


def test_subsets_come_from_the_present_modalities_only():
    g = torch.Generator().manual_seed(1)
    n = 20000
    mask = {"a": torch.ones(n, dtype=torch.bool), "b": torch.rand(n, generator=g) < 0.5, "c": torch.rand(n, generator=g) < 0.5}
    out = modality_dropout(mask, p=1.0, generator=g)
    before, after = torch.stack([mask[m] for m in "abc"], 1), torch.stack([out[m] for m in "abc"], 1)
    assert not (after & ~before).any()  # never turns an absent modality on
    assert after.any(1).all()  # never leaves a sample with nothing
    single = before.sum(1) == 1
    assert torch.equal(after[single], before[single])  # one modality: nothing to drop
    several = ~single
    assert (after[several].sum(1) < before[several].sum(1)).all()  # p=1: always a proper subset
    # two present of (a, b): each alone half the time
    pair = before[:, 1] & ~before[:, 2]
    assert after[pair, 0].float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_zero_is_identity_and_one_modality_is_untouched():
    mask = {"a": torch.tensor([True, False])}
    assert modality_dropout(mask, 0.0) is mask
    assert torch.equal(modality_dropout(mask, 1.0)["a"], mask["a"])
