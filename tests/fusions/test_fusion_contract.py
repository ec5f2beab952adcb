"""One contract test looped over every fusion: shapes, gradients, NaN, key order, missing modalities."""

from __future__ import annotations

import pytest
import torch
import yaml
from hydra.utils import get_class

from tests.helpers.recipes import RECIPES

# every fusion a recipe can select (recipes/model/fusion/*.yaml), so a new kind is covered when it is added
FUSIONS = [get_class(yaml.safe_load(path.read_text())["_target_"])
           for path in sorted((RECIPES / "model" / "fusion").glob("*.yaml"))]
DIMS = {"image": 12, "audio": 10, "text": 8}
TOKENS = {"image": 16, "audio": 5, "text": 7}  # a 4x4 image map, audio frames, words (fusions with needs_tokens)
B, K = 6, 5


def make_inputs(seed: int = 0, fusion_cls: type | None = None):
    """Pooled features (B, D), or tokens (B, T, D) for a fusion that declares `needs_tokens`; every modality present."""
    g = torch.Generator().manual_seed(seed)
    tokens = getattr(fusion_cls, "needs_tokens", False)
    features = {m: torch.randn(B, *([TOKENS[m]] if tokens else []), d, generator=g) for m, d in DIMS.items()}
    mask = {m: torch.ones(B, dtype=torch.bool) for m in DIMS}
    return features, mask


@pytest.mark.parametrize("fusion_cls", FUSIONS)
def test_output_shape_and_finite(fusion_cls):
    torch.manual_seed(0)
    fusion = fusion_cls(DIMS, K)
    features, mask = make_inputs(fusion_cls=fusion_cls)
    out = fusion(features, mask)
    assert out.shape == (B, K)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("fusion_cls", FUSIONS)
def test_every_parameter_gets_a_gradient(fusion_cls):
    torch.manual_seed(0)
    fusion = fusion_cls(DIMS, K, gate={"entropy_weight": 0.1, "balance_weight": 0.1})
    features, mask = make_inputs(fusion_cls=fusion_cls)
    result = fusion.fuse(features, mask)
    loss = torch.nn.functional.cross_entropy(result.logits, torch.arange(B) % K) + result.aux_loss
    loss = loss + sum(torch.nn.functional.cross_entropy(v, torch.arange(B) % K) for v in result.unimodal_logits.values())
    loss.backward()
    without = [n for n, p in fusion.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert without == [], f"parameters without a finite non-zero gradient: {without}"


@pytest.mark.parametrize("fusion_cls", FUSIONS)
def test_key_order_does_not_matter(fusion_cls):
    torch.manual_seed(0)
    fusion = fusion_cls(DIMS, K).eval()
    features, mask = make_inputs(fusion_cls=fusion_cls)
    reordered_f = {m: features[m] for m in reversed(list(features))}
    reordered_m = {m: mask[m] for m in ["text", "image", "audio"]}
    torch.testing.assert_close(fusion(features, mask), fusion(reordered_f, reordered_m))


@pytest.mark.parametrize("fusion_cls", FUSIONS)
def test_missing_modality_gets_zero_weight_and_renormalises(fusion_cls):
    torch.manual_seed(0)
    fusion = fusion_cls(DIMS, K).eval()
    features, mask = make_inputs(fusion_cls=fusion_cls)
    mask["audio"] = torch.tensor([True, False, True, False, True, True])
    result = fusion.fuse(features, mask)
    stages = {name.split("/")[0] for name in result.gate_weights}
    for stage in stages:
        weights = {m: w for m, w in ((n.split("/")[1], w) for n, w in result.gate_weights.items() if n.startswith(stage + "/"))}
        total = sum(weights.values())
        torch.testing.assert_close(total, torch.ones(B))
        assert torch.all(weights["audio"][~mask["audio"]] == 0)
        assert torch.all(weights["audio"][mask["audio"]] > 0)


@pytest.mark.parametrize("fusion_cls", FUSIONS)
def test_absent_modality_values_are_ignored(fusion_cls):
    """Whatever placeholder an absent modality carries, the output for that sample is the same."""
    torch.manual_seed(0)
    fusion = fusion_cls(DIMS, K).eval()
    features, mask = make_inputs(fusion_cls=fusion_cls)
    mask["image"] = torch.tensor([False, True, False, True, True, True])
    present = mask["image"].view(B, *[1] * (features["image"].dim() - 1))
    changed = dict(features, image=features["image"] + 100 * torch.randn(features["image"].shape))
    poisoned = dict(features, image=torch.where(present, features["image"], torch.tensor(float("nan"))))
    out_a, out_b, out_c = fusion(features, mask), fusion(changed, mask), fusion(poisoned, mask)
    absent = ~mask["image"]
    torch.testing.assert_close(out_a[absent], out_b[absent])
    torch.testing.assert_close(out_a, out_c)  # NaN placeholders of absent samples never leak
    assert not torch.allclose(out_a[~absent], out_b[~absent])


@pytest.mark.parametrize("fusion_cls", FUSIONS)
def test_sample_with_no_modality_is_an_error(fusion_cls):
    fusion = fusion_cls(DIMS, K)
    features, mask = make_inputs(fusion_cls=fusion_cls)
    mask = {m: torch.zeros(B, dtype=torch.bool) for m in mask}
    with pytest.raises(ValueError, match="at least one present modality"):
        fusion(features, mask)
