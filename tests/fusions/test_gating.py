"""The modality gate: masked softmax, regularisers, modality dropout."""

from __future__ import annotations

import math

import torch

from fusion.fusions.gating import ModalityGate, masked_softmax


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

