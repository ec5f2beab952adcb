"""`fusion.load(path)`: a run folder (config.yaml + best.ckpt/last.ckpt) or an export folder (config.json)."""

from __future__ import annotations

from pathlib import Path

import yaml

from fusion.errors import UserError
from fusion.inference.predictor import Predictor, TorchBackend
from fusion.inference.preprocessing import Preprocessing


class NotAModelError(UserError, FileNotFoundError):
    """The path is neither a run folder nor an export folder."""


def load(path: str | Path, backend: str | None = None, device: str = "cpu", threads: int | None = None):
    """Loads a trained model for prediction.

    Args:
        path: a run folder of train.py (or one of its .ckpt files), or a folder written by export.py.
        backend: "torch" or "onnx" (ONNX Runtime, CPU; export folders with model.onnx only). Default: torch
            where the folder has PyTorch weights, else onnx.
        device: torch device of the torch backend.
        threads: ONNX Runtime intra-op threads (None: its default).

    Returns:
        A `Predictor` (classification runs) or a `SyncPredictor` (sync runs); both have `.predict(...)`
        returning a pandas DataFrame.
    """
    from fusion.inference.export_folder import CONFIG

    folder = Path(path).expanduser()
    if backend not in (None, "torch", "onnx"):
        raise ValueError(f"backend must be 'torch' or 'onnx', got '{backend}'")
    if folder.is_dir() and (folder / CONFIG).is_file():
        return load_export(folder, backend, device, threads)
    run_dir = folder if folder.is_dir() else folder.parent
    if not (run_dir / "config.yaml").is_file():
        raise NotAModelError(f"'{folder}' is neither a run folder (config.yaml + best.ckpt) nor an export folder "
                             "(config.json from export.py)")
    if backend == "onnx":
        raise ValueError(f"'{folder}' is a run folder: export it with export.py format=onnx to run it with ONNX Runtime")
    if is_sync_run(run_dir):
        from fusion.inference.sync import SyncPredictor

        return SyncPredictor.load(folder, device)
    return load_run_folder(folder, device)


def is_sync_run(run_dir: Path) -> bool:
    """True if the run folder's config.yaml trained the sync recipe (its data module reads videos)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return "SyncDataModule" in str((config.get("data") or {}).get("_target_", ""))


def load_run_folder(path: Path, device: str = "cpu") -> Predictor:
    """A classification run folder's best checkpoint (weights-only load) as a Predictor."""
    from fusion.eval.run_folder import load_run

    run = load_run(path)
    spec = run.data_spec
    prep = Preprocessing.from_run_config(run.config, spec["modalities"])
    return Predictor(TorchBackend(run.model, device), list(spec["classes"]), prep, run.run_dir, run.fusion)


def load_export(folder: Path, backend: str | None, device: str = "cpu", threads: int | None = None) -> Predictor:
    """An export folder as a Predictor; every model file is checked against its sha256 in config.json first."""
    from fusion.inference.export_folder import SAFETENSORS, load_safetensors_model, onnx_path, read_config

    config = read_config(folder)
    prep = Preprocessing(**config["preprocessing"])
    backend = backend or ("torch" if SAFETENSORS in config["files"] else "onnx")
    if backend == "onnx":
        from fusion.inference.onnx_runner import OnnxBackend

        runner = OnnxBackend(onnx_path(folder, config), prep.modalities, threads)
    else:
        runner = TorchBackend(load_safetensors_model(folder, config), device)
    return Predictor(runner, list(config["labels"]), prep, folder, config.get("kind", "model"))
