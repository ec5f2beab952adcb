"""ContrastiveLoss against a direct per-row reference, temperature clamp and missing-modality masking."""

import math

import pytest
import torch
import torch.nn.functional as F

from fusion.alignment.loss import TOTAL_KEY, ContrastiveLoss


def reference_pair_loss(za: torch.Tensor, zb: torch.Tensor, scale: float) -> torch.Tensor:
    """-log softmax of the matching entry, written out row by row in both directions."""
    n = za.shape[0]
    terms = []
    for i in range(n):
        sims_ab = torch.stack([scale * torch.dot(za[i], zb[j]) for j in range(n)])
        sims_ba = torch.stack([scale * torch.dot(zb[i], za[j]) for j in range(n)])
        terms.append(-(sims_ab[i] - torch.logsumexp(sims_ab, 0)))
        terms.append(-(sims_ba[i] - torch.logsumexp(sims_ba, 0)))
    return torch.stack(terms).sum() / (2 * n)


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_initial_scale_is_one_over_point_07():
    loss = ContrastiveLoss()
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert loss.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_two_modalities_match_reference():
    za, zb = unit(6, 5, seed=0), unit(6, 5, seed=1)
    loss = ContrastiveLoss(init_temperature=0.5)
    out = loss({"image": za, "text": zb})
    expected = reference_pair_loss(za, zb, 2.0)
    assert out["image_text_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out[TOTAL_KEY].item() == pytest.approx(expected.item(), rel=1e-5)


def test_three_modalities_average_every_pair():
    z = {m: unit(5, 4, seed=i) for i, m in enumerate(["text", "audio", "image"])}
    out = ContrastiveLoss(init_temperature=0.1)(z)
    pairs = [("audio", "image"), ("audio", "text"), ("image", "text")]
    refs = [reference_pair_loss(z[a], z[b], 10.0).item() for a, b in pairs]
    for (a, b), ref in zip(pairs, refs, strict=True):
        assert out[f"{a}_{b}_loss"].item() == pytest.approx(ref, rel=1e-5)
    assert out[TOTAL_KEY].item() == pytest.approx(sum(refs) / 3, rel=1e-5)


def test_perfectly_aligned_pairs_give_lower_loss_than_random():
    za = unit(8, 16, seed=3)
    aligned = ContrastiveLoss()({"image": za, "audio": za.clone()})[TOTAL_KEY]
    shuffled = ContrastiveLoss()({"image": za, "audio": za.flip(0)})[TOTAL_KEY]
    assert aligned.item() < 0.01 < shuffled.item()


def test_scale_is_clamped_at_100_and_parameter_clamp():
    loss = ContrastiveLoss()
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000.0))
    assert loss.scale().item() == pytest.approx(100.0)
    za, zb = unit(4, 3, seed=4), unit(4, 3, seed=5)
    out = loss({"image": za, "text": zb})
    assert out[TOTAL_KEY].item() == pytest.approx(reference_pair_loss(za, zb, 100.0).item(), rel=1e-5)
    loss.clamp_()
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))


def test_missing_rows_are_dropped_from_their_pairs_only():
    z = {m: unit(6, 4, seed=10 + i) for i, m in enumerate(["audio", "image", "text"])}
    present_audio = torch.tensor([True, False, True, True, False, True])
    mask = {"audio": present_audio, "image": torch.ones(6, dtype=torch.bool)}
    out = ContrastiveLoss(init_temperature=0.2)(z, mask)
    keep = present_audio
    assert out["audio_image_loss"].item() == pytest.approx(
        reference_pair_loss(z["audio"][keep], z["image"][keep], 5.0).item(), rel=1e-5
    )
    assert out["image_text_loss"].item() == pytest.approx(
        reference_pair_loss(z["image"], z["text"], 5.0).item(), rel=1e-5
    )
    # Garbage in the missing rows must not change anything.
    z_bad = dict(z, audio=z["audio"].clone())
    z_bad["audio"][~keep] = 1e3
    out_bad = ContrastiveLoss(init_temperature=0.2)(z_bad, mask)
    assert out_bad[TOTAL_KEY].item() == pytest.approx(out[TOTAL_KEY].item(), rel=1e-6)


def test_pair_without_present_rows_is_left_out_and_gradients_flow():
    z = {m: unit(4, 3, seed=20 + i).requires_grad_() for i, m in enumerate(["audio", "image"])}
    loss = ContrastiveLoss()
    out = loss(z, {"audio": torch.zeros(4, dtype=torch.bool)})
    assert set(out) == {TOTAL_KEY} and out[TOTAL_KEY].item() == 0.0
    out = loss(z)
    out[TOTAL_KEY].backward()
    assert loss.logit_scale.grad is not None and torch.isfinite(loss.logit_scale.grad)
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in z.values())


def test_rejects_single_modality_and_bad_temperature():
    with pytest.raises(ValueError, match="two modalities"):
        ContrastiveLoss()({"image": unit(2, 3, seed=0)})
    with pytest.raises(ValueError, match="init_temperature"):
        ContrastiveLoss(init_temperature=0.0)
