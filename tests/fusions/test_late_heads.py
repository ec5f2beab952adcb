"""Late fusion's per-modality heads: the normalised form (head_norm) against the plain one it replaced."""

from __future__ import annotations

import torch

from fusion.fusions.late import LateFusion
from tests.fusions.test_fusion_contract import DIMS, K, make_inputs


def zero_first_bias(fusion: LateFusion) -> None:
    with torch.no_grad():
        for head in fusion.heads.values():
            head[0].bias.zero_()


def test_normalised_heads_ignore_the_scale_of_a_sample():
    """With head_norm, a sample's decision does not change when its features are scaled (as a louder clip might
    scale them); the plain head's decision does, and the other modalities' decisions never do."""
    torch.manual_seed(0)
    features, mask = make_inputs(0)
    louder = {**features, "audio": features["audio"] * torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 10.0])[:, None]}
    for head_norm, unchanged in ((True, True), (False, False)):
        fusion = LateFusion(DIMS, K, head_norm=head_norm).eval()
        zero_first_bias(fusion)
        before, after = fusion.fuse(features, mask), fusion.fuse(louder, mask)
        same = torch.allclose(after.unimodal_logits["audio"], before.unimodal_logits["audio"], atol=1e-3)  # LayerNorm eps aside
        assert same == unchanged, f"head_norm={head_norm}"
        for other in ("image", "text"):
            torch.testing.assert_close(after.unimodal_logits[other], before.unimodal_logits[other])


def test_plain_heads_keep_the_parameter_names_of_earlier_checkpoints():
    names = {n for n, _ in LateFusion(DIMS, K).heads.named_parameters()}
    assert names == {f"{m}.{i}.{p}" for m in DIMS for i in (0, 3) for p in ("weight", "bias")}
    normalised = {n for n, _ in LateFusion(DIMS, K, head_norm=True).heads.named_parameters()}
    assert normalised == {f"{m}.{i}.{p}" for m in DIMS for i in (0, 1, 4) for p in ("weight", "bias")}
