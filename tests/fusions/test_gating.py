"""The modality gate: masked softmax, regularisers, modality dropout."""

from __future__ import annotations

import math

import torch

from fusion.fusions.gating import ModalityGate, masked_softmax, modality_dropout


def test_masked_softmax_matches_softmax_over_present_entries():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    present = torch.tensor([[True, False, True], [True, True, True]])
    out = masked_softmax(scores, present)
    expected0 = torch.softmax(torch.tensor([1.0, 3.0]), dim=0)
    torch.testing.assert_close(out[0], torch.tensor([expected0[0], 0.0, expected0[1]]))
    torch.testing.assert_close(out[1], torch.softmax(scores[1], dim=0))


def test_gate_regularisers_have_the_documented_values():
    gate = ModalityGate({"a": 3, "b": 3}, entropy_weight=1.0, balance_weight=0.0)
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    present = torch.ones(2, 2, dtype=torch.bool)
    # entropy bonus: -(ln 2 + 0) / 2
    torch.testing.assert_close(gate.regulariser(weights, present), torch.tensor(-math.log(2) / 2))
    gate.entropy_weight, gate.balance_weight = 0.0, 1.0
    # load balance: M * sum(share^2) with shares (0.75, 0.25)
    torch.testing.assert_close(gate.regulariser(weights, present), torch.tensor(2 * (0.75**2 + 0.25**2)))


def test_modality_dropout_keeps_at_least_one_and_drops_at_rate():
    g = torch.Generator().manual_seed(0)
    n = 20000
    mask = {"a": torch.ones(n, dtype=torch.bool), "b": torch.ones(n, dtype=torch.bool), "c": torch.rand(n, generator=g) < 0.5}
    out = modality_dropout(mask, p=0.3, generator=g)
    kept = torch.stack([out[m] for m in sorted(out)], 1)
    assert kept.any(1).all()
    for m in mask:  # never turns an absent modality on
        assert not (out[m] & ~mask[m]).any()
    rate = 1 - out["a"].float().mean().item()
    assert 0.25 < rate < 0.31  # about p, slightly less because of rescues


def test_modality_dropout_zero_is_identity():
    mask = {"a": torch.tensor([True, False])}
    assert modality_dropout(mask, 0.0) is mask
