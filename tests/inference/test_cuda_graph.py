"""CUDA-graph inference: the replayed graph gives the eager model's logits and gate weights, for every subset of
present modalities through one graph per batch size; bf16 keeps the predictions."""

from __future__ import annotations

import pytest
import torch

from fusion.fusions.early import EarlyFusion
from fusion.fusions.late import LateFusion
from fusion.fusions.progressive import ProgressiveFusion
from fusion.inference.cuda_graph import GraphedModel
from tests.tasks.test_train_step import tiny_batch, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_needs_a_cuda_model():
    with pytest.raises(ValueError, match="needs a model on a CUDA device, got one on 'cpu'"):
        GraphedModel(tiny_model())


@cuda
@pytest.mark.parametrize("fusion_cls", [EarlyFusion, LateFusion, ProgressiveFusion])
def test_replay_equals_eager_for_every_subset(fusion_cls):
    model = tiny_model(fusion_cls).cuda().eval()
    graphed = GraphedModel(model)
    for seed, (image, audio) in enumerate([(True, True), (True, False), (False, True)]):
        batch = tiny_batch(seed, "cuda")
        batch["mask"] = {"image": torch.full((12,), image, device="cuda"), "audio": torch.full((12,), audio, device="cuda")}
        with torch.inference_mode():
            expected = model.forward_with_details(batch)
        logits, gates = graphed.forward_with_details(batch)
        torch.testing.assert_close(logits, expected.logits, atol=1e-5, rtol=1e-5)
        for name, weights in expected.gate_weights.items():
            torch.testing.assert_close(gates[name], weights, atol=1e-6, rtol=1e-5)
    assert len(graphed.graphs) == 1  # one graph served every presence pattern


@cuda
def test_bf16_replay_keeps_the_predictions_and_rows_need_a_modality():
    model = tiny_model().cuda().eval()
    batch = tiny_batch(0, "cuda")
    with torch.inference_mode():
        expected = model(batch)
    logits = GraphedModel(model, autocast_dtype=torch.bfloat16)(batch)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=0.05, rtol=0.05)  # bf16: 8 mantissa bits
    cpu_batch = tiny_batch(0)
    cpu_batch["mask"] = {m: torch.zeros(12, dtype=torch.bool) for m in cpu_batch["mask"]}
    with pytest.raises(ValueError, match="at least one present modality"):
        GraphedModel(model)(cpu_batch)
