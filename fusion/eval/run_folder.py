"""Loading a trained run folder (config.yaml + best.ckpt/last.ckpt) for evaluation.

Weights are read with the project's one checkpoint loader (weights only, checksum verified) and the task is
rebuilt from the checkpoint's ``hyper_parameters`` (plain dicts), so no pickled code runs. The run's resolved
config.yaml is read with plain ``yaml``; ``_target_`` configs are built with Hydra's ``instantiate``, so
evaluating a run needs no config tree.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from hydra.utils import get_class, instantiate
from torch import nn

from fusion.errors import ConfigError
from fusion.runtime.checkpoints import CheckpointError, load_checkpoint_file, resolve_checkpoint

log = logging.getLogger(__name__)


def read_config(run_dir: Path) -> dict:
    """The resolved config the run was trained with (``<run folder>/config.yaml``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"'{path}' not found: a run is read from its folder, with the resolved config.yaml "
                              "next to its checkpoint")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise CheckpointError(f"'{path}' has no 'model' and 'data' sections")
    return config


@dataclass
class LoadedRun:
    """A trained classifier with what is needed to evaluate it."""

    name: str
    fusion: str
    run_dir: Path
    checkpoint: Path
    config: dict
    task: nn.Module
    epochs_trained: int | None = None

    @property
    def model(self) -> nn.Module:
        """The plain ``batch -> logits`` module (``task.model`` for a ClassificationTask)."""
        return getattr(self.task, "model", self.task)

    @property
    def data_spec(self) -> dict:
        return self.task.hparams["data_spec"]


def fusion_kind(config: dict) -> str:
    """Short fusion name from the model config: ``fusion.fusions.late.LateFusion`` -> ``late``."""
    target = (config["model"].get("fusion") or {}).get("_target_", "")
    return target.split(".")[-2] if target.count(".") >= 2 else str(config.get("recipe_name", "model"))


def load_run(path: str | Path) -> LoadedRun:
    """Loads a run folder or checkpoint: the task class from ``config.yaml``'s ``model._target_``, rebuilt from the
    checkpoint's hyper-parameters, weights loaded strictly, in eval mode on CPU."""
    run_dir, checkpoint_path = resolve_checkpoint(path)
    config = read_config(run_dir)
    checkpoint = load_checkpoint_file(checkpoint_path)
    if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"'{checkpoint_path}' is not a Lightning checkpoint with hyper_parameters and state_dict")
    task_class = get_class(config["model"]["_target_"])
    accepted = inspect.signature(task_class.__init__).parameters
    hparams = checkpoint["hyper_parameters"]
    removed = sorted(key for key in hparams if key not in accepted)
    if removed:  # options that left the product (docs/experiments/); a run trained with them off still loads
        log.warning("%s: ignoring hyper-parameters this version no longer has: %s", checkpoint_path, removed)
    task = task_class(**{key: value for key, value in hparams.items() if key in accepted})
    task.load_state_dict(checkpoint["state_dict"])
    name = str(config.get("recipe_name") or run_dir.parent.name)
    epoch = checkpoint.get("epoch")  # index of the epoch whose end wrote the checkpoint
    return LoadedRun(name, fusion_kind(config), run_dir, checkpoint_path, config, task.eval(),
                     None if epoch is None else int(epoch) + 1)


BATCH_CACHE_NAME = "test_batches.pt"


PCM16_KEY = "__pcm16__"


def _pack(value: object) -> object:
    """Float tensors that are exactly 16-bit PCM samples (k / 32768) are stored as int16: lossless, half the size."""
    if isinstance(value, dict):
        return {key: _pack(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.numel():
        scaled = value * 32768.0
        if bool((scaled == scaled.round()).all()) and float(scaled.abs().max()) <= 32767:
            return {PCM16_KEY: scaled.to(torch.int16)}
    return value


def _unpack(value: object) -> object:
    if isinstance(value, dict):
        if PCM16_KEY in value:
            return value[PCM16_KEY].float() / 32768.0
        return {key: _unpack(item) for key, item in value.items()}
    return value


def save_batch_cache(batches: list[dict], data_config: dict, path: Path) -> None:
    """Stores decoded test batches (plain tensors) so evaluation can run where the media or decoders are absent."""
    torch.save({"data": data_config, "batches": [_pack(batch) for batch in batches]}, path)


def load_batch_cache(path: Path, data_config: dict) -> list[dict]:
    """Test batches from ``save_batch_cache``; refuses a cache made from a different data config."""
    if not path.is_file():
        raise ConfigError(f"'{path}' not found: run evaluate.py with cache_batches=true where the data is")
    cache = torch.load(path, map_location="cpu", weights_only=True)
    if cache["data"] != data_config:
        raise ConfigError(f"'{path}' was made from data config {cache['data']}, not {data_config}")
    return [_unpack(batch) for batch in cache["batches"]]


def test_data_config(run: LoadedRun, data_overrides: dict) -> dict:
    """The run's data config with ``data_overrides`` applied and augmentation off."""
    return {**run.config["data"], **data_overrides, "augment": False}


def load_test_batches(run: LoadedRun, data_overrides: dict, out_dir: Path | None = None) -> tuple[list[dict], object]:
    """Test batches of the run's data (or of ``data_overrides``, e.g. another manifest), in the run's label order;
    a skip report of rows with problems goes to ``out_dir`` (None: none is written).

    Raises:
        ValueError: when the data's classes or modalities differ from the ones the model was trained on.
    """
    data_config = test_data_config(run, data_overrides)
    datamodule = instantiate(data_config, _convert_="all")
    datamodule.prepare(out_dir)
    datamodule.setup("test")
    spec, trained = datamodule.spec, run.data_spec
    if list(spec["classes"]) != list(trained["classes"]):
        raise ConfigError(f"data classes {spec['classes']} differ from the classes {trained['classes']} that "
                         f"'{run.checkpoint}' was trained on")
    missing = sorted(set(trained["modalities"]) - set(spec["modalities"]))
    if missing:
        raise ConfigError(f"data lacks modality {missing} that '{run.checkpoint}' was trained on")
    return list(datamodule.test_dataloader()), datamodule
