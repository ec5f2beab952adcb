"""Progressive fusion specifics: unimodal decisions stay unimodal, feedback changes the fused state."""

from __future__ import annotations

import pytest
import torch

from fusion.fusions.progressive import ProgressiveFusion

DIMS = {"image": 12, "audio": 10, "text": 8}
B, K = 5, 4


def make_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(B, d, generator=g) for m, d in DIMS.items()}
    mask = {m: torch.ones(B, dtype=torch.bool) for m in DIMS}
    return features, mask


def test_each_unimodal_decision_depends_only_on_its_own_modality():
    torch.manual_seed(0)
    fusion = ProgressiveFusion(DIMS, K, num_stages=3).eval()
    features, mask = make_inputs(0)
    before = fusion.fuse(features, mask)
    changed = {**features, "audio": features["audio"] * -3.0 + 1.0}
    after = fusion.fuse(changed, mask)
    torch.testing.assert_close(after.unimodal_logits["image"], before.unimodal_logits["image"], rtol=0, atol=0)
    torch.testing.assert_close(after.unimodal_logits["text"], before.unimodal_logits["text"], rtol=0, atol=0)
    assert (after.unimodal_logits["audio"] - before.unimodal_logits["audio"]).abs().max() > 1e-3
    # ... while the fused decision does see the change through the stages
    assert (after.logits - before.logits).abs().max() > 1e-4


def test_feedback_reaches_the_second_stage():
    """With two stages, zeroing the feedback projection must change the second stage's gate weights."""
    torch.manual_seed(0)
    fusion = ProgressiveFusion(DIMS, K, num_stages=2).eval()
    features, mask = make_inputs(1)
    with_feedback = fusion.fuse(features, mask).gate_weights
    with torch.no_grad():
        for layer in fusion.feedback[0].values():
            layer.weight.zero_()
            layer.bias.zero_()
    without = fusion.fuse(features, mask).gate_weights
    torch.testing.assert_close(without["stage1/image"], with_feedback["stage1/image"])
    assert (without["stage2/image"] - with_feedback["stage2/image"]).abs().max() > 1e-6


def test_single_stage_has_no_feedback_and_zero_stages_is_an_error():
    assert len(ProgressiveFusion(DIMS, K, num_stages=1).blocks) == 0
    with pytest.raises(ValueError, match="num_stages"):
        ProgressiveFusion(DIMS, K, num_stages=0)


@pytest.mark.parametrize("mixing", ["logp", "prob"])
def test_decision_mixing_rules(mixing):
    """logp: sum_m w_m log p_m; prob: log sum_m w_m p_m; an absent modality gets no weight and no NaN gradient."""
    torch.manual_seed(0)
    fusion = ProgressiveFusion(DIMS, K, decision_gate_inputs="confidence", decision_mixing=mixing).eval()
    features, mask = make_inputs(2)
    mask["text"] = torch.tensor([True, False, True, False, True])
    features = {m: f.requires_grad_() for m, f in features.items()}
    result = fusion.fuse(features, mask)
    names = fusion.decision_gate.modalities
    weights = torch.stack([result.gate_weights[f"decision/{n.lstrip('~')}"] for n in names], dim=1)  # (B, M + 1)
    probs = torch.stack([torch.softmax(result.decision_logits[n], dim=1) for n in names], dim=1)  # (B, M + 1, K)
    expected = ((weights.unsqueeze(-1) * probs).sum(1).log() if mixing == "prob"
                else (weights.unsqueeze(-1) * probs.log()).sum(1))
    torch.testing.assert_close(result.logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.all(weights[~mask["text"], names.index("text")] == 0)
    result.logits.logsumexp(1).sum().backward()
    assert all(torch.isfinite(f.grad).all() for f in features.values())
    # the same combination from the stored decisions alone
    decision_mask = {**mask, "~fused": torch.ones(B, dtype=torch.bool)}
    combined, _ = fusion.combine_decisions({n: d.detach() for n, d in result.decision_logits.items()}, decision_mask)
    torch.testing.assert_close(combined, result.logits.detach(), rtol=1e-5, atol=1e-5)
