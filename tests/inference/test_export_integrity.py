"""An export folder that was altered, truncated or left half-written is refused, naming the file."""

from __future__ import annotations

import shutil

import pytest

import fusion
from fusion.inference.integrity import ExportError
from fusion.runtime.checkpoints import CheckpointError

pytestmark = pytest.mark.slow  # ONNX export of every fusion kind: about a minute each on 2 cores


@pytest.fixture
def export_copy(exports, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(exports["late"], folder)
    return folder


def test_flipped_byte_in_safetensors_is_refused(export_copy):
    path = export_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"model\.safetensors' is corrupt or altered"):
        fusion.load(export_copy)


def test_truncated_onnx_is_refused(export_copy):
    path = export_copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.onnx' is truncated or altered"):
        fusion.load(export_copy, backend="onnx")
    fusion.load(export_copy)  # the intact safetensors weights still load


def test_missing_model_file_and_config_are_refused(export_copy):
    (export_copy / "model.safetensors").unlink()
    with pytest.raises(ExportError, match=r"model\.safetensors' is missing"):
        fusion.load(export_copy)
    (export_copy / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"config\.json' is not valid JSON"):
        fusion.load(export_copy)
    (export_copy / "config.json").unlink()
    with pytest.raises(fusion.inference.loading.NotAModelError, match="neither a run folder"):
        fusion.load(export_copy)


def test_export_loads_without_the_run_folder(tiny_runs, exports, tmp_path, new_manifest):
    moved = tmp_path / "moved"
    shutil.copytree(exports["early"], moved)
    before = fusion.load(moved).predict(new_manifest)
    assert set(p.name for p in moved.iterdir()) == {"config.json", "model.safetensors", "model.onnx"}
    assert len(before) > 0
