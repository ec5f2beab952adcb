"""A run, its safetensors export and its ONNX export predict the same on new data, for every fusion kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fusion
from fusion.inference.onnx_export import subsets

pytestmark = pytest.mark.slow  # ONNX export of every fusion kind: about a minute each on 2 cores

KINDS = ["early", "late", "progressive"]

GATE_PREFIX = "gate/"


@pytest.mark.parametrize("kind", KINDS)
def test_run_safetensors_and_onnx_agree(kind, tiny_runs, exports, new_manifest):
    from_run = fusion.load(tiny_runs[kind]).predict(new_manifest)
    from_safetensors = fusion.load(exports[kind]).predict(new_manifest)
    from_onnx = fusion.load(exports[kind], backend="onnx").predict(new_manifest)

    classes = fusion.load(tiny_runs[kind]).classes
    assert len(classes) == 10
    assert list(from_run.columns[:2]) == ["row", "pred"]  # no label column: the manifest has none
    assert [c for c in from_run.columns if c.startswith("prob/")] == [f"prob/{c}" for c in classes]
    gates = [c for c in from_run.columns if c.startswith(GATE_PREFIX)]
    assert gates and all(c.count("/") == 2 for c in gates)  # gate/<stage>/<modality>
    assert len(from_run) == sum(1 for _ in open(new_manifest)) - 1
    assert np.allclose(from_run.filter(like="prob/").sum(axis=1), 1.0)
    probs = from_run.filter(like="prob/").to_numpy()

    assert from_safetensors.columns.tolist() == from_run.columns.tolist()
    assert (from_safetensors["pred"] == from_run["pred"]).all()
    np.testing.assert_allclose(from_safetensors.filter(like="prob/").to_numpy(), probs, atol=1e-6)

    assert from_onnx.columns.tolist() == from_run.columns.tolist()
    assert (from_onnx["pred"] == from_run["pred"]).all()
    np.testing.assert_allclose(from_onnx.filter(like="prob/").to_numpy(), probs, atol=1e-4)
    np.testing.assert_allclose(from_onnx[gates].to_numpy(), from_run[gates].to_numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_matches_torch_on_every_modality_subset(kind, exports):
    """export.py compared ONNX Runtime with PyTorch on every non-empty subset of present modalities."""
    config = json.loads((exports[kind] / "config.json").read_text())
    check = config["onnx_check"]
    assert sorted(check) == sorted("+".join(s) for s in subsets(["audio", "image", "text"]))
    for subset, result in check.items():
        assert result["same_predictions"], subset
        assert result["max_abs_logit_diff"] < 1e-3, (subset, result)
        assert result["max_abs_gate_diff"] < 1e-4, (subset, result)


def test_missing_modality_gets_zero_gate_weight(tiny_runs, tiny_digits):
    model = fusion.load(tiny_runs["late"])
    one = model.predict({"text": "a seven"})
    assert one["gate/decision/text"][0] == pytest.approx(1.0)
    assert one["gate/decision/image"][0] == 0.0 and one["gate/decision/audio"][0] == 0.0


def test_predict_with_labels_dataframe_and_dict(tiny_runs, tiny_digits):
    import pandas as pd

    model = fusion.load(tiny_runs["progressive"])
    frame = pd.read_csv(tiny_digits, keep_default_na=False)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    test[["image", "audio"]] = test[["image", "audio"]].map(lambda p: str(tiny_digits.parent / p) if p else "")
    result = model.predict(test)
    assert list(result.columns[:3]) == ["row", "label", "pred"] and len(result) == len(test)
    assert (result["label"] == test["label"].astype(str)).all()
    single = model.predict(test.iloc[0][["image", "text"]].to_dict())
    assert len(single) == 1 and single["row"][0] == 1
