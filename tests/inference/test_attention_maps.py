"""A cross-attention run through the inference paths: attention pictures from predict.py, export to ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fusion.commands.app import compose_config
from fusion.commands.predict import run as predict
from fusion.data.tokenizer import ByteTokenizer
from fusion.eval.attention_maps import region_attention, word_spans
from fusion.fusions.cross_attention import CrossAttentionFusion
from tests.inference.conftest import tiny_run


@pytest.fixture(scope="module")
def xattn_run(tiny_digits, tmp_path_factory):
    return tiny_run("xattn", tiny_digits, tmp_path_factory.mktemp("runs") / "xattn")


def test_predict_writes_one_picture_per_row_with_an_image(xattn_run, new_manifest, tmp_path):
    frame = predict(compose_config("predict", [f"run={xattn_run}", f"data.manifest={new_manifest}", f"out={tmp_path}",
                                               "attention_maps=4"]))
    assert {"gate/cross/image", "gate/cross/text", "gate/cross/audio"} <= set(frame.columns)
    pictures = sorted((tmp_path / "attention").glob("row*.png"))
    # rows 1-4 of new_manifest have the modality patterns (all), (image), (audio), (text): two have an image
    assert [p.name for p in pictures] == ["row00001.png", "row00002.png"]
    assert Image.open(pictures[0]).size[0] > Image.open(pictures[1]).size[0]  # words and sound get panels


def test_attention_maps_of_a_pooled_fusion_are_refused(tmp_path):
    from fusion.encoders.image import ImageEncoder
    from fusion.errors import ConfigError
    from fusion.fusions.late import LateFusion
    from fusion.fusions.model import FusionModel
    from fusion.inference.attention import check_attention_maps
    from fusion.inference.predictor import Predictor, TorchBackend
    from fusion.inference.preprocessing import Preprocessing

    model = FusionModel({"image": ImageEncoder(out_dim=8, width=4)}, LateFusion({"image": 8}, 2))
    late = Predictor(TorchBackend(model), ["a", "b"], Preprocessing(modalities=["image"]), tmp_path, "late")
    with pytest.raises(ConfigError, match="needs a cross-attention model .* is a late model"):
        check_attention_maps(late)


def test_onnx_export_agrees_with_torch(xattn_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from fusion.commands.export import run as export
    from fusion.inference.loading import load
    from fusion.inference.onnx_export import compare_with_torch

    export(compose_config("export", [f"run={xattn_run}", "format=onnx", f"out={tmp_path}"]))
    onnx, reference = load(tmp_path, backend="onnx"), load(xattn_run)
    report = compare_with_torch(reference.backend.model, onnx.preprocessing, onnx.backend.run)
    assert all(r["same_predictions"] and r["max_abs_logit_diff"] < 1e-4 for r in report.values()), report


def test_region_attention_keeps_the_mass_of_every_level():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion({"image": 6, "text": 5}, 3, hidden_dim=8, num_heads=2).eval()
    features = {"image": torch.randn(2, 16, 6), "text": torch.randn(2, 4, 5)}
    mask = {m: torch.ones(2, dtype=torch.bool) for m in features}
    result = fusion.fuse(features, mask)
    maps = region_attention(result.attention, result.image_grids, "text")  # (B, 1 + 4, 4, 4)
    on_image = result.attention[-1]["text->image"].mean(1)[..., 1:].sum(-1)  # (B, 1 + 4)
    torch.testing.assert_close(maps.sum((-1, -2)), on_image)


def test_word_spans_of_the_byte_tokenizer():
    text = "the digit left of the 7"
    spans = word_spans(text, ByteTokenizer(), max_length=32)
    assert [w for w, _ in spans] == text.split()
    ids = ByteTokenizer()([text], 32)["input_ids"][0]
    assert all(bytes(int(ids[t]) - 3 for t in tokens).decode() == w for w, tokens in spans)
    assert word_spans(text, ByteTokenizer(), max_length=8)[-1] == ("7", [])  # truncated away
    assert np.array_equal(np.array(word_spans("é a", ByteTokenizer(), 32)[1][1]), np.array([4]))
