"""Gate supervision: the last gate's target is the softmax of each input's log-probability of the label over the
inputs present; trained on it, a gate moves its weight to the modality whose decision is right."""

from __future__ import annotations

import math

import pytest
import torch

from fusion.fusions.base import FusionResult
from fusion.fusions.early import EarlyFusion
from fusion.fusions.late import LateFusion
from fusion.fusions.progressive import ProgressiveFusion
from fusion.tasks.classify import classification_loss
from fusion.tasks.gate_supervision import gate_supervision_loss, last_gate_decisions
from tests.tasks.test_train_step import tiny_batch, tiny_model


def test_loss_equals_the_hand_computed_cross_entropy_with_absent_inputs_left_out():
    """Two samples, gate inputs audio / image / fused; the second sample has no audio."""
    decisions = {"audio": torch.tensor([[2.0, 0.0], [0.0, 5.0]]), "image": torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
                 "~fused": torch.tensor([[1.0, 1.0], [0.0, 0.0]])}
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.0, 0.6, 0.4]])  # (B, G): audio, image, fused
    result = FusionResult(torch.zeros(2, 2), {"stage1/audio": torch.ones(2), "decision/audio": weights[:, 0],
                                              "decision/image": weights[:, 1], "decision/fused": weights[:, 2]},
                          unimodal_logits={m: decisions[m] for m in ("audio", "image")}, decision_logits=decisions)
    labels = torch.tensor([0, 1])
    mask = {"audio": torch.tensor([True, False]), "image": torch.tensor([True, True])}

    def p_label(logits, row):  # probability of the label under one decision
        values = logits[row].tolist()
        return math.exp(values[labels[row]]) / sum(math.exp(v) for v in values)

    expected = 0.0
    for row, names in ((0, ["audio", "image", "~fused"]), (1, ["image", "~fused"])):
        p = [p_label(decisions[n], row) for n in names]
        columns = {"audio": 0, "image": 1, "~fused": 2}
        expected -= sum(pi / sum(p) * math.log(weights[row, columns[n]]) for pi, n in zip(p, names, strict=True))
    got = gate_supervision_loss(result, labels, mask)
    assert got.item() == pytest.approx(expected / 2, rel=1e-6)


@pytest.mark.parametrize("fusion_cls, stage, sources", [
    (EarlyFusion, "feature", ["audio", "image"]), (LateFusion, "decision", ["audio", "image"]),
    (ProgressiveFusion, "decision", ["audio", "fused", "image"])])
def test_the_last_gate_of_every_fusion_kind_has_a_decision_per_input(fusion_cls, stage, sources):
    result = tiny_model(fusion_cls).forward_with_details(tiny_batch())
    decisions = last_gate_decisions(result)
    assert sorted(decisions) == [f"{stage}/{s}" for s in sources]
    expected_fused = result.decision_logits.get("~fused")
    for name, logits in decisions.items():
        source = name.split("/")[1]
        assert logits is (expected_fused if source == "fused" else result.unimodal_logits[source])


def test_classification_loss_adds_the_weighted_supervision_over_the_mask_the_fusion_saw():
    result = tiny_model(ProgressiveFusion).forward_with_details(tiny_batch())
    labels = tiny_batch()["label"]
    clean = {m: torch.zeros_like(seen) for m, seen in result.mask.items()}  # the heads' rows: none here
    with_gate, _ = classification_loss(result, labels, clean, gate_weight=0.3)
    without, _ = classification_loss(result, labels, clean)
    torch.testing.assert_close(with_gate - without, 0.3 * gate_supervision_loss(result, labels, result.mask))


def test_supervised_gate_learns_to_weigh_the_modality_that_is_right():
    """Late fusion with fixed decisions: on every row one modality's decision is right (which one shows in the
    features), the other's is wrong. Trained on the supervision loss, the gate gives the right one most of the
    weight (it starts near 0.5)."""
    torch.manual_seed(0)
    b, k = 256, 4
    labels = torch.randint(0, k, (b,))
    audio_right = torch.rand(b) > 0.5
    wrong = (labels + 1) % k
    features = {"audio": torch.randn(b, 8) + 2 * audio_right[:, None].float(),
                "image": torch.randn(b, 8) - 2 * audio_right[:, None].float()}
    mask = {"audio": torch.ones(b, dtype=torch.bool), "image": torch.ones(b, dtype=torch.bool)}
    decisions = {"audio": 3 * torch.nn.functional.one_hot(torch.where(audio_right, labels, wrong), k).float(),
                 "image": 3 * torch.nn.functional.one_hot(torch.where(audio_right, wrong, labels), k).float()}
    fusion = LateFusion({"audio": 8, "image": 8}, k, hidden_dim=8)

    def weight_of_the_right_modality() -> float:
        with torch.no_grad():
            weights = fusion.fuse(features, mask).gate_weights
        return float(torch.where(audio_right, weights["decision/audio"], weights["decision/image"]).mean())

    before = weight_of_the_right_modality()
    optimizer = torch.optim.Adam(fusion.gate.parameters(), lr=0.01)
    for _ in range(150):
        result = fusion.fuse(features, mask)
        result.unimodal_logits = decisions
        loss = gate_supervision_loss(result, labels, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert 0.4 < before < 0.6 and weight_of_the_right_modality() > 0.9
