"""Cross-attention fusion beyond the shared contract: key padding, the image pyramid, FusionModel's token path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.encoders.audio import AudioEncoder
from fusion.encoders.image import ImageEncoder
from fusion.encoders.text import TextEncoder
from fusion.errors import ConfigError
from fusion.fusions.cross_attention import CrossAttentionFusion, MaskedAttention
from fusion.fusions.model import FusionModel

DIMS = {"image": 12, "audio": 10, "text": 8}
B, K = 4, 3


def inputs(seed: int = 0):
    """Tokens: a 4x4 image map, 5 audio frames, 7 text tokens of which rows keep 7, 5, 3, 1; every modality present."""
    g = torch.Generator().manual_seed(seed)
    features = {"image": torch.randn(B, 16, 12, generator=g), "audio": torch.randn(B, 5, 10, generator=g),
                "text": torch.randn(B, 7, 8, generator=g)}
    lengths = torch.tensor([7, 5, 3, 1])
    token_mask = {"text": torch.arange(7)[None, :] < lengths[:, None]}  # (B, 7)
    mask = {m: torch.ones(B, dtype=torch.bool) for m in DIMS}
    return features, mask, token_mask


def fusion(**options) -> CrossAttentionFusion:
    torch.manual_seed(0)
    return CrossAttentionFusion(DIMS, K, hidden_dim=16, num_layers=2, num_heads=2, **options).eval()


def test_attention_on_padded_text_and_absent_modalities_is_exactly_zero():
    model = fusion()
    features, mask, token_mask = inputs()
    mask["audio"] = torch.tensor([True, False, True, False])
    result = model.fuse(features, mask, token_mask)
    padded = ~token_mask["text"]  # (B, 7); key 0 of each stream is its [CLS]
    for block in result.attention:
        for query in ("image", "audio"):
            text_keys = block[f"{query}->text"][:, :, :, 1:]  # (B, h, Tq, 7)
            assert torch.all(text_keys.masked_select(padded[:, None, None, :].expand_as(text_keys)) == 0)
        for query in ("image", "text"):
            audio_keys = block[f"{query}->audio"]  # (B, h, Tq, 1 + 5)
            assert torch.all(audio_keys[~mask["audio"]] == 0)
            assert torch.all(audio_keys[mask["audio"]].sum(-1) > 0)


def test_padded_token_values_never_reach_the_output():
    model = fusion()
    features, mask, token_mask = inputs()
    poisoned = dict(features, text=features["text"].masked_fill(~token_mask["text"][..., None], float("nan")))
    torch.testing.assert_close(model.fuse(poisoned, mask, token_mask).logits, model.fuse(features, mask, token_mask).logits)


def test_rows_with_one_modality_work_and_ignore_the_others():
    model = fusion()
    features, mask, token_mask = inputs()
    only_image = torch.tensor([True, False, False, False])
    mask = {"image": torch.ones(B, dtype=torch.bool), "audio": ~only_image, "text": ~only_image}
    result = model.fuse(features, mask, token_mask)
    changed = dict(features, audio=features["audio"] + 5, text=-features["text"])
    again = model.fuse(changed, mask, token_mask)
    torch.testing.assert_close(result.logits[only_image], again.logits[only_image])
    assert torch.all(result.gate_weights["cross/image"][only_image] == 1)
    assert torch.all(result.attention[-1]["image->text"][only_image] == 0)  # nothing to attend to


def test_image_tokens_form_a_pyramid_of_scales():
    model = fusion(image_scales=[1, 2, 4])
    features, mask, token_mask = inputs()
    result = model.fuse(features, mask, token_mask)
    assert result.image_grids == [(4, 4), (2, 2), (1, 1)]
    assert result.attention[0]["text->image"].shape == (B, 2, 1 + 7, 1 + 16 + 4 + 1)
    assert fusion(image_scales=[1]).fuse(features, mask, token_mask).attention[0]["text->image"].shape[-1] == 1 + 16


def test_pooled_features_are_one_token_each():
    model = fusion()
    features = {m: torch.randn(B, d) for m, d in DIMS.items()}
    mask = {m: torch.ones(B, dtype=torch.bool) for m in DIMS}
    assert model(features, mask).shape == (B, K)


def test_masked_attention_matches_softmax_over_valid_keys():
    torch.manual_seed(0)
    attention = MaskedAttention(8, 2).eval()
    x, context = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    valid = torch.tensor([[True, True, False, True, False], [False] * 5])
    out, weights = attention(x, context, valid)
    assert torch.all(weights[1] == 0) and torch.all(out[1] == attention.out.bias)  # no valid key: zero message
    reference, _ = attention(x[:1], context[:1, [0, 1, 3]], valid[:1, [0, 1, 3]])
    torch.testing.assert_close(out[:1], reference)


def test_fusion_model_passes_encoder_tokens_and_the_text_mask():
    torch.manual_seed(0)
    encoders = {"image": ImageEncoder(out_dim=12, width=4, image_size=32), "audio": AudioEncoder(out_dim=10, width=4),
                "text": TextEncoder(out_dim=8, num_layers=1, num_heads=2, max_length=16)}
    model = FusionModel(encoders, CrossAttentionFusion(DIMS, K, hidden_dim=16, num_heads=2))
    ids = torch.randint(3, 259, (B, 16)) * (torch.arange(16) < 6)
    batch = {"image": torch.randn(B, 1, 32, 32), "audio": 0.1 * torch.randn(B, 8000),
             "text": {"input_ids": ids, "attention_mask": (ids > 0).long()},
             "mask": {m: torch.ones(B, dtype=torch.bool) for m in DIMS}, "label": torch.arange(B) % K}
    result = model.forward_with_details(batch)
    assert result.logits.shape == (B, K) and result.image_grids == [(4, 4), (2, 2), (1, 1)]
    assert torch.all(result.attention[0]["image->text"][..., 1 + 6 :] == 0)  # text padding
    nn.functional.cross_entropy(result.logits, batch["label"]).backward()
    assert encoders["image"].proj.weight.grad.abs().sum() > 0


def test_encoders_without_tokens_are_refused():
    class Pooled(nn.Module):
        out_dim = 12

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ConfigError, match=r"\['image'\] encoder gives none"):
        FusionModel({"image": Pooled()}, CrossAttentionFusion({"image": 12}, K))
    flattened = ImageEncoder(out_dim=12, width=4, pool="flatten")  # one vector per image, no per-position tokens
    with pytest.raises(ConfigError, match=r"model.encoders.image.pool=mean"):
        FusionModel({"image": flattened}, CrossAttentionFusion({"image": 12}, K))


def test_decision_gate_mixes_the_fused_and_the_modality_decisions():
    model = fusion(decision_gate=True)
    features, mask, token_mask = inputs()
    mask["audio"] = torch.tensor([True, False, True, False])
    result = model.fuse(features, mask, token_mask)
    weights = {name.split("/")[1]: w for name, w in result.gate_weights.items() if name.startswith("decision/")}
    assert sorted(weights) == ["audio", "fused", "image", "text"]
    torch.testing.assert_close(sum(weights.values()), torch.ones(B))
    assert torch.all(weights["audio"][~mask["audio"]] == 0)
    assert sorted(result.decision_logits) == ["audio", "image", "text", "~fused"]
    assert sorted(result.unimodal_logits) == ["audio", "image", "text"]
