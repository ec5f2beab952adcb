"""predict.py as a Hydra command: a manifest, one example, and the user errors."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from fusion.commands.app import compose_config
from fusion.commands.predict import run
from fusion.errors import ConfigError
from fusion.inference.predictor import summary
from tests.helpers.recipes import REPO


def predict_config(*overrides: str):
    return compose_config("predict", list(overrides))


def test_manifest_writes_predictions_csv(tiny_runs, new_manifest, tmp_path):
    frame = run(predict_config(f"run={tiny_runs['progressive']}", f"data.manifest={new_manifest}", f"out={tmp_path}"))
    written = pd.read_csv(tmp_path / "predictions.csv", dtype={"pred": str})
    assert written.columns.tolist() == frame.columns.tolist()
    assert written["row"].tolist() == list(range(1, len(written) + 1))
    assert {"pred", "prob/seven", "prob/zero", "gate/decision/fused", "gate/stage1/image"} <= set(written.columns)
    report = summary(frame)
    assert report["rows"] == len(written) and "accuracy" not in report


def test_labels_give_accuracy_and_bad_rows_are_skipped(tiny_runs, tiny_digits, tmp_path):
    manifest = tiny_digits.parent / "with_problems.csv"
    manifest.write_text("label,image,text\nthree,images/missing.png,a three\nseven,,a seven\ntwelve,,twelve\n")
    with pytest.raises(SystemExit):  # on_error=raise: a user error, exit status 2
        run(predict_config(f"run={tiny_runs['late']}", f"data.manifest={manifest}", f"out={tmp_path}"))
    frame = run(predict_config(f"run={tiny_runs['late']}", f"data.manifest={manifest}", f"out={tmp_path}",
                               "data.on_error=skip"))
    assert frame["row"].tolist() == [2]
    skipped = pd.read_csv(tmp_path / "skipped_rows.csv")
    assert skipped["row"].tolist() == [1, 3] and "not one of the model's classes" in skipped["message"][1]
    assert summary(frame)["labelled_rows"] == 1


def test_single_example_and_default_out(tiny_runs, tiny_digits):
    image = next((tiny_digits.parent / "images").glob("*.png"))
    frame = run(predict_config(f"run={tiny_runs['early']}", f"image={image}", "text=a seven"))
    assert len(frame) == 1
    assert (tiny_runs["early"] / "predictions.csv").is_file()  # out= defaults to the run folder


def test_needs_exactly_one_source(tiny_runs, new_manifest):
    with pytest.raises(SystemExit):
        run(predict_config(f"run={tiny_runs['early']}"))
    with pytest.raises(ConfigError):
        run.__wrapped__(predict_config(f"run={tiny_runs['early']}", f"data.manifest={new_manifest}", "text=a seven"))


def test_predict_py_subprocess(exports, new_manifest, tmp_path):
    """The entry point as a user runs it, on an export folder with ONNX Runtime."""
    result = subprocess.run([sys.executable, "predict.py", f"run={exports['progressive']}", "backend=onnx",
                             f"data.manifest={new_manifest}", f"out={tmp_path}"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "summary:" in result.stdout and (tmp_path / "predictions.csv").is_file()
