"""Retrieval metrics, cosines and zero-shot classification on hand-checked small examples."""

import pytest
import torch
import torch.nn.functional as F

from fusion.alignment.retrieval import (
    alignment_report,
    class_prototypes,
    match_ranks,
    matched_cosine,
    prompt_prototypes,
    retrieval_metrics,
    zero_shot_accuracy,
)


def test_match_ranks_counts_strictly_higher_items():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.2, 0.9], [0.3, 0.4, 0.1]])
    eye = torch.eye(3, dtype=torch.bool)
    assert match_ranks(sim, eye).tolist() == [1, 3, 3]
    with pytest.raises(ValueError, match="at least one matching"):
        match_ranks(sim, torch.zeros(3, 3, dtype=torch.bool))


def test_retrieval_metrics_instance_and_class_level():
    # Four unit vectors on the axes; the gallery swaps items 0 and 1, which share a class.
    q = torch.eye(4)
    g = torch.eye(4)[[1, 0, 2, 3]]
    labels = torch.tensor([5, 5, 6, 7])
    m = retrieval_metrics(q, g, labels, ks=(1, 2))
    # Queries 0 and 1 find the other one first (rank 2); 2 and 3 are exact.
    assert m["R1"] == pytest.approx(0.5) and m["R2"] == pytest.approx(1.0)
    assert m["median_rank"] == pytest.approx(1.0)  # torch median of [2, 2, 1, 1] is the lower middle
    assert m["class_R1"] == pytest.approx(1.0) and m["class_median_rank"] == 1.0


def test_retrieval_metrics_random_embeddings_are_near_chance():
    torch.manual_seed(0)
    q, g = torch.randn(400, 32), torch.randn(400, 32)
    m = retrieval_metrics(q, g, ks=(1, 10))
    assert m["R1"] < 0.02 and m["R10"] < 0.06
    assert 150 < m["median_rank"] < 250


def test_matched_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = matched_cosine(a, b)
    s = 2**-0.5
    assert out["matched_cos"] == pytest.approx((1 + s) / 2)
    assert out["unmatched_cos"] == pytest.approx((s + 0.0) / 2)


def test_prototypes_and_zero_shot():
    emb = torch.tensor([[1.0, 0.1], [0.9, -0.1], [0.0, 1.0], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    protos = class_prototypes(emb, labels, 2)
    assert torch.allclose(protos.norm(dim=1), torch.ones(2))
    assert protos[0, 0] > 0.99 and protos[1, 1] > 0.95
    assert zero_shot_accuracy(emb, labels, protos) == 1.0
    assert zero_shot_accuracy(emb, 1 - labels, protos) == 0.0
    with pytest.raises(ValueError, match="without examples"):
        class_prototypes(emb, labels, 3)
    prompts = torch.stack([torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0]])])
    expected0 = F.normalize(torch.tensor([1.0 + 2**-0.5, 2**-0.5]), dim=0)
    assert torch.allclose(prompt_prototypes(prompts)[0], expected0)


def test_alignment_report_covers_every_direction_and_respects_mask():
    torch.manual_seed(1)
    base = F.normalize(torch.randn(6, 8), dim=-1)
    emb = {"image": base, "audio": base + 0.01 * torch.randn(6, 8), "text": torch.randn(6, 8)}
    mask = {m: torch.ones(6, dtype=torch.bool) for m in emb}
    mask["text"][:5] = False  # only one text row: the pairs with text are left out
    out = alignment_report(emb, mask, labels=torch.arange(6))
    assert out["audio_to_image/R1"] == 1.0 and out["image_to_audio/class_R1"] == 1.0
    assert out["audio_image/matched_cos"] > 0.99
    assert not any("text" in key for key in out)
    assert out["mean/R1"] == 1.0
