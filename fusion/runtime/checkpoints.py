"""The one checkpoint format: atomic writes with a tensor checksum, safe loading, best-checkpoint selection.

A checkpoint is a dict of tensors and plain containers saved with `torch.save`, plus a CRC32 of its tensors
(`CHECKSUM_KEY`). It is written through `fusion.files.atomic_write` (temp file, fsync, rename), optionally in a
background thread (`AsyncAtomicCheckpointIO`), and read only with `weights_only=True`; every error names the
file. `LatestOnTiesCheckpoint` keeps the latest of equally good epochs as best.ckpt.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from fusion.errors import ConfigError, UserError
from fusion.files import atomic_write, fsync_directory

CHECKSUM_KEY = "tensor_crc32"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, corrupt, truncated, or carries pickled code; the message names the file."""


def tensor_checksum(obj: Any) -> int:
    """CRC32 over the bytes of every tensor in a nested dict/list/tuple, in a fixed order (keys sorted).

    torch.load checks the zip structure but not the tensor bytes, so flipped bits in a stored tensor would
    load silently; files written by `atomic_save` carry this checksum and are verified on load.
    """
    crc = 0

    def visit(value: Any, where: str) -> None:
        nonlocal crc
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            crc = zlib.crc32(f"{where}:{value.dtype}:{tuple(value.shape)}".encode(), crc)
            crc = zlib.crc32(data, crc)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if key != CHECKSUM_KEY:
                    visit(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{where}/{i}")

    visit(obj, "")
    return crc


CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """``(run folder, checkpoint file)`` for a run folder (its best.ckpt, else last.ckpt) or a checkpoint file.

    Raises:
        CheckpointError: naming the path, if it is neither.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path, path / name
        raise CheckpointError(f"run folder '{path}' has neither {' nor '.join(CHECKPOINT_NAMES)}")
    if path.is_file():
        return path.parent, path
    raise CheckpointError(f"run '{path}' is neither a run folder nor a checkpoint file")


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    """Loads a checkpoint with `weights_only=True` (on the CPU unless `map_location` says otherwise).

    Raises:
        CheckpointError: naming the file, if it is missing, truncated/corrupt, or not weights-only.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        data = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it carries objects other than tensors and plain containers "
            f"(pickled code is never executed). Details: {str(err).splitlines()[0]}") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, IndexError, KeyError ... on damaged files
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt and cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no details'})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint '{path}' does not hold a dict of weights")
    if CHECKSUM_KEY in data:
        stored, actual = data.pop(CHECKSUM_KEY), tensor_checksum(data)
        if stored != actual:
            raise CheckpointError(f"checkpoint '{path}' is corrupt: its tensors do not match the checksum written "
                                  f"with them (stored {stored:#010x}, computed {actual:#010x})")
    return data


def load_matching_weights(module: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Copies every weight of the checkpoint whose name and shape match `module` (fine-tuning / init_from).

    Weights whose shape differs (e.g. a classifier head for another label set) keep their fresh init.

    Returns:
        {"loaded": [...], "skipped_shape": [...], "missing": [...]} parameter names.
    """
    state = load_checkpoint_file(path)
    state = state.get("state_dict", state)
    own = module.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    if not loaded:
        raise CheckpointError(f"init_from '{path}': no weight matches this model by name and shape")
    module.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded),
            "skipped_shape": sorted(k for k in state if k in own and k not in loaded),
            "missing": sorted(k for k in own if k not in state)}


RESUME_KEYS = ("state_dict", "loops", "optimizer_states", "global_step", "epoch")


def check_resume_checkpoint(module: nn.Module, path: str | Path) -> dict:
    """Checks, before Lightning touches it, that `path` is a full training checkpoint of this model.

    Returns:
        The loaded checkpoint.

    Raises:
        CheckpointError: naming the file, if it cannot be read safely, is a weights-only file (use init_from),
            or its weights do not fit `module` (other recipe, other data modalities or classes).
    """
    data = load_checkpoint_file(path)
    missing = [k for k in RESUME_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"ckpt_path '{path}' is not a full training checkpoint (missing {missing}); "
                              "to start a new run from its weights use init_from= instead")
    state = data["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"ckpt_path '{path}': 'state_dict' is not a dict of tensors")
    own = module.state_dict()
    absent = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    reshaped = sorted(k for k in own if k in state and tuple(getattr(state[k], 'shape', ())) != tuple(own[k].shape))
    if absent or unexpected or reshaped:
        details = "; ".join(f"{name}: {keys[:3]}{' ...' if len(keys) > 3 else ''}" for name, keys in
                            (("not in the file", absent), ("not in the model", unexpected),
                             ("other shape", reshaped)) if keys)
        raise CheckpointError(f"ckpt_path '{path}' does not match this model ({details}); resume with the "
                              "recipe and data it was trained with, or fine-tune with init_from=")
    return data


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` that never leaves a partial file at `path` (temp file, fsync, rename, fsync folder).

    A dict gets a CRC32 of its tensors (`CHECKSUM_KEY`), checked by `load_checkpoint_file`.
    """
    if isinstance(obj, dict):
        obj = {**obj, CHECKSUM_KEY: tensor_checksum(obj)}
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


class AtomicCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO: atomic local writes and weights-only loads with errors that name the file.

    Pass it as `lightning.Trainer(plugins=[AtomicCheckpointIO()])`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: str | Path, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Loads with `weights_only=True` (never executes pickled code).

        Raises:
            CheckpointError: naming the file, if it is missing, truncated/corrupt or carries pickled objects.
        """
        if weights_only is False:
            raise CheckpointError(f"checkpoint '{path}': loading with weights_only=False is disabled; "
                                  "checkpoints hold tensors and plain containers only")
        return load_checkpoint_file(path, map_location=map_location)

    def remove_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_directory(path.parent)

    def wait(self) -> None:
        """Blocks until every write that was started has reached the disk (nothing to wait for here)."""


def snapshot_to_cpu(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A copy of the checkpoint whose tensors are CPU copies, so training may keep changing the originals."""
    return apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))


class AsyncAtomicCheckpointIO(AtomicCheckpointIO):
    """AtomicCheckpointIO whose writes run in a background thread.

    `save_checkpoint` copies the tensors to CPU memory on the calling thread (the only time a training step
    waits, plus waiting for a previous write still running: at most one write is pending, so memory stays
    bounded), then returns while the file is written atomically. A failed write is raised, naming the file,
    at the next save, load, remove, or at teardown (end of fit/test).
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._pending_path: Path | None = None
        self._lock = threading.Lock()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        snapshot = snapshot_to_cpu(checkpoint)
        with self._lock:
            self._wait_locked()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
            self._pending_path = Path(path)
            self._pending = self._executor.submit(atomic_save, snapshot, self._pending_path)

    def wait(self) -> None:
        """Blocks until the pending write is on disk; raises CheckpointError if it failed."""
        with self._lock:
            self._wait_locked()

    def _wait_locked(self) -> None:
        pending, path = self._pending, self._pending_path
        self._pending, self._pending_path = None, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as err:
            raise CheckpointError(f"writing checkpoint '{path}' failed in the background "
                                  f"({type(err).__name__}: {err}); the previous file at that path is intact") from err

    def load_checkpoint(self, path: str | Path, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        self.wait()
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: str | Path) -> None:
        self.wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


def build_checkpoint_io(mode: str) -> AtomicCheckpointIO:
    """The CheckpointIO for the config key `checkpoint_io`: "sync" (atomic) or "async" (atomic, background)."""
    if mode == "sync":
        return AtomicCheckpointIO()
    if mode == "async":
        return AsyncAtomicCheckpointIO()
    raise ConfigError(f"checkpoint_io must be 'sync' or 'async', got '{mode}'")


class LatestOnTiesCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose top-k also admits a score equal to the k-th best (the newer checkpoint replaces it).

    Lightning replaces its best checkpoint only on a strictly better score, so once a validation metric
    saturates best.ckpt would stay at the first epoch that reached it, however much the model improves
    afterwards on what the metric cannot see (the other modalities' own decisions, calibration).
    """

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is None or self.save_top_k in (-1, 0) or len(self.best_k_models) < self.save_top_k:
            return super().check_monitor_top_k(trainer, current)
        monitor_op = {"min": torch.le, "max": torch.ge}[self.mode]
        better_or_equal = bool(monitor_op(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(better_or_equal)
