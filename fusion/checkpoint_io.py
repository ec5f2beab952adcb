"""Crash-safe checkpoint files for Lightning: atomic writes, optional background writing, safe loading.

A checkpoint is written to a temporary file in the target's folder, flushed and fsynced, renamed over the
target with `os.replace` (atomic on POSIX), and the folder is fsynced so the rename itself survives a power
loss. A crash at any moment leaves either the previous complete file or the new complete file, never a torn
one. `AsyncAtomicCheckpointIO` takes the snapshot on the training thread and writes it in a background
thread, so a training step waits only for the in-memory copy.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from fusion.checkpoints import CHECKSUM_KEY, CheckpointError, load_checkpoint_file, tensor_checksum

TEMP_SUFFIX = ".tmp"


def fsync_directory(folder: str | Path) -> None:
    """Makes a rename/unlink in `folder` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A unique hidden temporary name next to `path`: `.<name>.<pid>.<random>.tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Deletes temporary files of `path` left by writers that no longer run (e.g. killed mid-write)."""
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        parts = candidate.name[len(path.name) + 2 :].split(".")
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        if pid is not None and (pid == os.getpid() or _process_alive(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` that never leaves a partial file at `path` (temp file, fsync, rename, fsync folder).

    A dict gets a CRC32 of its tensors (`CHECKSUM_KEY`), checked by `fusion.checkpoints.load_checkpoint_file`.
    """
    path = Path(path)
    if isinstance(obj, dict):
        obj = {**obj, CHECKSUM_KEY: tensor_checksum(obj)}
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


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
    raise ValueError(f"checkpoint_io must be 'sync' or 'async', got '{mode}'")

