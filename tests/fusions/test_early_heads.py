"""Early fusion's own heads: on the encoder's features (head_input=features) or on the trunk's projection."""

from __future__ import annotations

import pytest
import torch

from fusion.errors import ConfigError
from fusion.fusions.early import EarlyFusion
from tests.fusions.test_fusion_contract import DIMS, K, make_inputs


def test_feature_heads_read_the_encoder_features_alone():
    """Each own decision is its head applied to that modality's features: the projection the trunk reads does not
    reach it, and a sample's scale (a louder clip) does not move it; the fused answer does move with the projection."""
    torch.manual_seed(0)
    fusion = EarlyFusion(DIMS, K, head_input="features").eval()
    features, mask = make_inputs(0)
    before = fusion.fuse(features, mask)
    for m in DIMS:
        torch.testing.assert_close(before.unimodal_logits[m], fusion.heads[m](features[m]))
    with torch.no_grad():
        fusion.proj["audio"][0].weight.mul_(3.0)
        for head in fusion.heads.values():
            head[0].bias.zero_()
    louder = {**features, "audio": features["audio"] * torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 10.0])[:, None]}
    plain, scaled = fusion.fuse(features, mask), fusion.fuse(louder, mask)
    torch.testing.assert_close(scaled.unimodal_logits["audio"], plain.unimodal_logits["audio"], atol=1e-3, rtol=1e-3)
    assert not torch.allclose(plain.logits, before.logits, atol=1e-3)


def test_projection_heads_keep_the_parameter_names_of_earlier_checkpoints():
    fusion = EarlyFusion(DIMS, K)
    assert {n for n, _ in fusion.heads.named_parameters()} == {f"{m}.{p}" for m in DIMS for p in ("weight", "bias")}
    features, mask = make_inputs(0)
    result = fusion.fuse(features, mask)
    torch.testing.assert_close(result.unimodal_logits["image"], fusion.heads["image"](fusion.proj["image"](features["image"])))


def test_an_unknown_head_input_names_the_option():
    with pytest.raises(ConfigError, match="head_input"):
        EarlyFusion(DIMS, K, head_input="trunk")
