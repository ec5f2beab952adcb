"""Export folder: `model.safetensors` and/or `model.onnx` plus `config.json` (model config, labels,
preprocessing, sha256 of every model file), loadable with `fusion.load` without the run folder and without
pickle. config.json is written last, so an interrupted export leaves no loadable half."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fusion.files import atomic_write
from fusion.fusions.model import FusionModel
from fusion.inference.integrity import ExportError, file_digest, verify_file
from fusion.inference.preprocessing import Preprocessing

log = logging.getLogger(__name__)

FORMAT = "fusion-export"
VERSION = 1
CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
ONNX = "model.onnx"
FORMATS = ("safetensors", "onnx", "both")


def export_model(model: FusionModel, model_config: dict, prep: Preprocessing, classes: list[str], kind: str,
                 out: Path, fmt: str = "both", check: bool = True) -> dict:
    """Writes the export folder `out`; returns its config.json content.

    Args:
        model: the trained FusionModel.
        model_config: the classifier's hyper-parameters (data_spec, encoders, fusion, ...), as in the checkpoint.
        prep: the preprocessing of the run.
        classes: label names in logit order.
        kind: fusion kind (early, late, progressive).
        fmt: "safetensors", "onnx" or "both".
        check: compare ONNX Runtime with PyTorch on every subset of present modalities (stored as `onnx_check`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got '{fmt}'")
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    config = {"format": FORMAT, "version": VERSION, "kind": kind, "labels": list(classes),
              "model": portable(model_config), "preprocessing": prep.to_dict(), "files": {}}
    (out / CONFIG).unlink(missing_ok=True)  # the folder is not loadable until the new config.json is complete
    if fmt in ("safetensors", "both"):
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        with atomic_write(out / SAFETENSORS, "wb") as f:
            f.write(save(tensors, metadata={"format": "pt"}))
        config["files"][SAFETENSORS] = file_digest(out / SAFETENSORS)
    if fmt in ("onnx", "both"):
        from fusion.inference.onnx_export import compare_with_torch, example_inputs, export_onnx
        from fusion.inference.onnx_runner import OnnxBackend

        config["onnx"] = export_onnx(model, out / ONNX, example_inputs(prep, 2))
        config["files"][ONNX] = file_digest(out / ONNX)
        if check:
            config["onnx_check"] = compare_with_torch(model, prep, OnnxBackend(out / ONNX, prep.modalities).run)
    with atomic_write(out / CONFIG) as f:
        json.dump(config, f, indent=2)
    return config


def portable(model_config: dict) -> dict:
    """The model config without paths to weights that the export already holds (torchvision weights_path)."""
    config = json.loads(json.dumps(model_config))
    image = (config.get("encoders") or {}).get("image")
    if isinstance(image, dict) and image.get("weights_path"):
        image["weights_path"] = None
    return config


def read_config(folder: Path) -> dict:
    """config.json of an export folder, checked for format and version."""
    path = folder / CONFIG
    if not path.is_file():
        raise ExportError(f"'{folder}' has no {CONFIG}: not an export folder (or its export did not finish)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"'{path}' is not valid JSON ({err}); export the run again with export.py") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f"'{path}' is not a fusion export config (no \"format\": \"{FORMAT}\")")
    if config.get("version") != VERSION:
        raise ExportError(f"'{path}' has export version {config.get('version')}; this version reads {VERSION}")
    return config


def load_safetensors_model(folder: Path, config: dict) -> FusionModel:
    """The FusionModel of an export folder, weights from model.safetensors (checked against its sha256)."""
    from safetensors.torch import load_file

    from fusion.tasks.classify import build_fusion_model

    if SAFETENSORS not in config["files"]:
        raise ExportError(f"'{folder}' holds no {SAFETENSORS} (exported with format=onnx): load it with backend='onnx'")
    path = verify_file(folder, SAFETENSORS, config["files"][SAFETENSORS])
    hparams = config["model"]
    model = build_fusion_model(hparams["data_spec"], hparams["encoders"], hparams["fusion"],
                               single_modality_fallback=hparams.get("single_modality_fallback", False),
                               blank_as_absent=hparams.get("blank_as_absent", False))
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type on damaged headers
        raise ExportError(f"'{path}' cannot be read ({err}); export the run again with export.py") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"'{path}' does not match the model of config.json (missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]})")
    return model.eval()


def onnx_path(folder: Path, config: dict) -> Path:
    """model.onnx of an export folder, checked against its sha256."""
    if ONNX not in config["files"]:
        raise ExportError(f"'{folder}' holds no {ONNX} (exported with format=safetensors)")
    return verify_file(folder, ONNX, config["files"][ONNX])
