"""CUDA-graph inference: the replayed graph gives the eager model's logits and gate weights, for every subset of
present modalities through one graph per batch size; bf16 keeps the predictions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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


@cuda
def test_graphed_bf16_copy_fills_a_bf16_image_buffer_and_keeps_the_predictions():
    """The static image buffer of a bf16 copy's graph is bf16 (the copy into it casts), the mask stays bool; the
    replay gives the bf16 model's own logits, and its gate weights, kept bf16 in the graph, read as float32."""
    from fusion.inference.cuda_graph import bf16_copy

    model = tiny_model().cuda().eval()
    half = bf16_copy(model)
    batch = tiny_batch(0, "cuda")
    graphed = GraphedModel(half)
    logits, gates = graphed.forward_with_details(batch)
    (captured,) = graphed.graphs.values()
    assert captured.inputs["image"].dtype == torch.bfloat16 and captured.inputs["mask"]["image"].dtype == torch.bool
    with torch.inference_mode():
        expected = half.forward_with_details(batch)
    torch.testing.assert_close(logits, expected.logits.float(), atol=1e-2, rtol=1e-2)
    assert torch.equal(logits.argmax(1), expected.logits.argmax(1))
    for name, weights in expected.gate_weights.items():  # bf16 in the graph, read as float32
        assert captured.gates[name].dtype == torch.bfloat16 and gates[name].dtype == torch.float32
        torch.testing.assert_close(gates[name], weights.float(), atol=1e-2, rtol=1e-2)


def test_bf16_copy_keeps_the_predictions_and_the_frontend_in_fp32():
    """bf16 weights cast once (the audio tower's log-mel front end stays fp32): the same predictions as fp32 on
    a tiny model with the real audio tower; logits within 0.1 (bf16 has 8 mantissa bits)."""
    from fusion.encoders.audio import AudioEncoder
    from fusion.fusions.model import FusionModel
    from fusion.inference.cuda_graph import bf16_copy
    from tests.tasks.test_train_step import Flat

    torch.manual_seed(0)
    audio = AudioEncoder(n_mels=16, out_dim=16, width=4, augment=False)
    model = FusionModel({"audio": audio, "image": Flat(64)}, ProgressiveFusion({"audio": 16, "image": 16}, 5,
                                                                               hidden_dim=16)).eval()
    batch = tiny_batch(0)
    batch["audio"] = 0.1 * torch.randn(12, 8000)
    half = bf16_copy(model)
    assert half.encoders["audio"].frontend.mel.mel_scale.fb.dtype == torch.float32
    assert half.fusion.fused_head[1].weight.dtype == torch.bfloat16
    assert model.fusion.fused_head[1].weight.dtype == torch.float32  # the original is untouched
    with torch.inference_mode():
        expected, got = model(batch), half(batch).float()
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)


def test_bf16_copy_inputs_take_their_encoders_dtype():
    """`input_dtypes` gives bf16 for the image tower of a bf16 copy and fp32 for its log-mel front end."""
    from fusion.encoders.audio import AudioEncoder
    from fusion.encoders.image import ImageEncoder
    from fusion.fusions.model import FusionModel
    from fusion.inference.cuda_graph import bf16_copy, input_dtypes

    encoders = {"image": ImageEncoder(out_dim=12, width=4, image_size=32),
                "audio": AudioEncoder(n_mels=16, out_dim=10, width=4, augment=False)}
    model = FusionModel(encoders, ProgressiveFusion({"image": 12, "audio": 10}, 5, hidden_dim=16)).eval()
    assert input_dtypes(model) == {"audio": torch.float32, "image": torch.float32}
    assert input_dtypes(bf16_copy(model)) == {"audio": torch.float32, "image": torch.bfloat16}


def test_bf16_copy_adds_the_bias_after_the_matmul_of_plain_linear_layers_only():
    """Linear layers of the bf16 copy compute x W^T, then + b (the same values as nn.Linear); subclasses of
    nn.Linear (attention's output projection, read by its owner) stay as they are."""
    from fusion.inference.cuda_graph import MatmulThenBias, bf16_copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.MultiheadAttention(5, 1), nn.Linear(5, 3, bias=False))
    model.encoders = {}
    half = bf16_copy(model)
    assert type(half[0]) is MatmulThenBias and type(half[3]) is MatmulThenBias
    assert type(half[2].out_proj) is type(model[2].out_proj)
    x = torch.randn(4, 6)
    hidden = half[1](half[0](x.bfloat16()))  # (4, 5) bf16
    torch.testing.assert_close(hidden.float(), model[1](model[0](x)), atol=0.03, rtol=0.02)  # bf16: 8 mantissa bits
    torch.testing.assert_close(half[3](hidden).float(), model[3](hidden.float()), atol=0.03, rtol=0.02)


def test_bf16_copy_casts_inputs_that_reach_encoders_through_their_tokens():
    """Cross-attention fusion reads the image tower through `forward_tokens`, not `forward`: the bf16 copy casts
    the image at its first weighted layer, so the fp32 batch runs and gives logits close to fp32 (tiny model)."""
    from fusion.encoders.audio import AudioEncoder
    from fusion.encoders.image import ImageEncoder
    from fusion.fusions.cross_attention import CrossAttentionFusion
    from fusion.fusions.model import FusionModel
    from fusion.inference.cuda_graph import bf16_copy

    torch.manual_seed(0)
    encoders = {"image": ImageEncoder(out_dim=12, width=4, image_size=32),
                "audio": AudioEncoder(n_mels=16, out_dim=10, width=4, augment=False)}
    model = FusionModel(encoders, CrossAttentionFusion({"image": 12, "audio": 10}, 5, hidden_dim=16,
                                                       num_heads=2)).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(6, 1, 32, 32, generator=g), "audio": 0.1 * torch.randn(6, 8000, generator=g),
             "mask": {"image": torch.ones(6, dtype=torch.bool), "audio": torch.ones(6, dtype=torch.bool)}}
    half = bf16_copy(model)
    with torch.inference_mode():
        expected, got = model(batch), half(batch)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)


def test_row_reduce_linear_traces_a_reduction_for_few_rows_and_keeps_the_values():
    """Compiled with at most 8 rows, the layers of `with_row_reduce_linears` trace as multiply-and-sum (no
    linear call) with nn.Linear's values; with more rows they stay linear calls. The original model keeps its
    classes."""
    from fusion.inference.cuda_graph import RowReduceLinear, with_row_reduce_linears

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3, bias=False))
    rows = with_row_reduce_linears(model)
    assert type(rows[0]) is RowReduceLinear and type(model[0]) is nn.Linear
    graphs = []

    def record(graph_module, _inputs):
        graphs.append({str(node.target) for node in graph_module.graph.nodes})
        return graph_module.forward

    compiled = torch.compile(rows, backend=record, dynamic=False)
    for batch in (1, 16):
        x = torch.randn(batch, 6)
        torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=1e-5)
    few, many = graphs
    assert not any("linear" in target for target in few) and any("sum" in target for target in few)
    assert any("linear" in target for target in many)
