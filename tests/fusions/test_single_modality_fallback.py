"""The single-modality fallback: a sample with one modality present gets that modality's own decision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.fusions.early import EarlyFusion
from fusion.fusions.late import LateFusion
from fusion.fusions.model import FusionModel, single_modality_decisions
from fusion.fusions.progressive import ProgressiveFusion

FUSIONS = {"early": EarlyFusion, "late": LateFusion, "progressive": ProgressiveFusion}


def _model(kind: str, fallback: bool) -> FusionModel:
    torch.manual_seed(0)
    encoders = {"audio": nn.Linear(6, 8), "image": nn.Linear(5, 8)}
    for encoder in encoders.values():
        encoder.out_dim = 8
    fusion = FUSIONS[kind]({"audio": 8, "image": 8}, 3, hidden_dim=16)
    return FusionModel(encoders, fusion, single_modality_fallback=fallback)


def _batch(audio: list[bool], image: list[bool]) -> dict:
    g = torch.Generator().manual_seed(1)
    rows = len(audio)
    return {"audio": torch.randn(rows, 6, generator=g), "image": torch.randn(rows, 5, generator=g),
            "label": torch.arange(rows) % 3, "mask": {"audio": torch.tensor(audio), "image": torch.tensor(image)}}


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_a_sample_with_one_modality_gets_that_modalitys_decision(kind):
    batch = _batch([True, True, False], [True, False, True])
    with torch.no_grad():
        plain = _model(kind, fallback=False).eval().forward_with_details(batch)
        fallback = _model(kind, fallback=True).eval()(batch)
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
