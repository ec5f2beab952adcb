"""Isolated branches (each modality's encoder and head learn only from its own loss) and the single-modality
fallback (a sample with one modality present gets that modality's decision)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusion.errors import ConfigError
from fusion.fusions.cross_attention import CrossAttentionFusion
from fusion.fusions.early import EarlyFusion
from fusion.fusions.late import LateFusion
from fusion.fusions.model import FusionModel, single_modality_decisions
from fusion.fusions.progressive import ProgressiveFusion

FUSIONS = {"early": EarlyFusion, "late": LateFusion, "progressive": ProgressiveFusion}


def _model(kind: str, isolate: bool, fallback: bool = False) -> FusionModel:
    torch.manual_seed(0)
    encoders = {"audio": nn.Linear(6, 8), "image": nn.Linear(5, 8)}
    for encoder in encoders.values():
        encoder.out_dim = 8
    fusion = FUSIONS[kind]({"audio": 8, "image": 8}, 3, hidden_dim=16)
    return FusionModel(encoders, fusion, isolate_branches=isolate, single_modality_fallback=fallback)


def _batch(audio: list[bool], image: list[bool]) -> dict:
    g = torch.Generator().manual_seed(1)
    rows = len(audio)
    return {"audio": torch.randn(rows, 6, generator=g), "image": torch.randn(rows, 5, generator=g),
            "label": torch.arange(rows) % 3, "mask": {"audio": torch.tensor(audio), "image": torch.tensor(image)}}


def _grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.abs().sum() if p.grad is not None else torch.tensor(0.0) for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_isolated_branches_route_each_loss_to_its_own_parameters(kind):
    model = _model(kind, isolate=True)
    batch = _batch([True] * 4, [True] * 4)
    result = model.forward_with_details(batch)
    fused = _grads(model, F.cross_entropy(result.logits, batch["label"]))
    assert all(fused[n] == 0 for n in fused if n.startswith("encoders.")), "the fused loss reached an encoder"
    assert any(fused[n] > 0 for n in fused if "gate" in n)
    result = model.forward_with_details(batch)
    unimodal = _grads(model, F.cross_entropy(result.unimodal_logits["audio"], batch["label"]))
    assert all(unimodal[n] > 0 for n in unimodal if n.startswith("encoders.audio."))
    assert all(unimodal[n] == 0 for n in unimodal if n.startswith("encoders.image.") or "gate" in n)


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_joint_branches_let_the_fused_loss_reach_the_encoders(kind):
    model = _model(kind, isolate=False)
    batch = _batch([True] * 4, [True] * 4)
    fused = _grads(model, F.cross_entropy(model(batch), batch["label"]))
    assert all(fused[n] > 0 for n in fused if n.startswith("encoders.") and n.endswith("weight"))


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_isolation_changes_no_prediction(kind):
    batch = _batch([True, False, True], [True, True, False])
    with torch.no_grad():
        torch.testing.assert_close(_model(kind, isolate=True).eval()(batch), _model(kind, isolate=False).eval()(batch))


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_a_sample_with_one_modality_gets_that_modalitys_decision(kind):
    batch = _batch([True, True, False], [True, False, True])
    with torch.no_grad():
        plain = _model(kind, isolate=False).eval().forward_with_details(batch)
        fallback = _model(kind, isolate=False, fallback=True).eval()(batch)
    torch.testing.assert_close(fallback[0], plain.logits[0])  # both present: the fused decision
    torch.testing.assert_close(fallback[1], torch.log_softmax(plain.unimodal_logits["audio"][1], dim=0))
    torch.testing.assert_close(fallback[2], torch.log_softmax(plain.unimodal_logits["image"][2], dim=0))


def test_single_modality_decisions_against_a_loop():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=g)
    heads = {m: torch.randn(5, 4, generator=g) for m in ("a", "b", "c")}
    mask = {"a": torch.tensor([1, 1, 0, 0, 1]).bool(), "b": torch.tensor([1, 0, 1, 0, 0]).bool(),
            "c": torch.tensor([1, 0, 0, 1, 1]).bool()}
    out = single_modality_decisions(logits, heads, mask)
    for row in range(5):
        present = [m for m in heads if mask[m][row]]
        expected = torch.log_softmax(heads[present[0]][row], 0) if len(present) == 1 else logits[row]
        torch.testing.assert_close(out[row], expected)


def test_a_fusion_without_branches_refuses_isolation():
    fusion = CrossAttentionFusion({"image": 8, "audio": 8}, 3, hidden_dim=16)
    encoders = {"audio": nn.Linear(6, 8), "image": nn.Linear(5, 8)}
    with pytest.raises(ConfigError, match="isolate_branches=false"):
        FusionModel(encoders, fusion, isolate_branches=True)
