"""Atomic checkpoint writes: a crash during a write leaves the previous checkpoint intact and loadable;
the background writer snapshots tensors, surfaces its errors and never leaves a partial file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fusion.runtime.checkpoints import (
    AsyncAtomicCheckpointIO,
    AtomicCheckpointIO,
    CheckpointError,
    atomic_save,
    build_checkpoint_io,
    load_checkpoint_file,
)
from tests.helpers.recipes import REPO

WRITER = """
import sys, torch
from fusion.runtime.checkpoints import atomic_save
path, size = sys.argv[1], int(sys.argv[2])
step = 0
while True:
    step += 1
    atomic_save({"step": step, "weights": torch.full((size,), float(step))}, path)
    print(step, flush=True)
"""


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(2_000_000)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        first = int(writer.stdout.readline())  # one complete write is on disk
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".last.ckpt.*.tmp")):  # the next write is under way
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.0005)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL
    torn = list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert torn, "the kill should have hit a write in progress"
    data = load_checkpoint_file(target)
    assert data["step"] >= first
    assert torch.equal(data["weights"], torch.full((2_000_000,), float(data["step"])))  # one whole version
    # the next save (another process) cleans up what the dead writer left
    atomic_save({"step": -1}, target)
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert load_checkpoint_file(target)["step"] == -1


def test_a_write_that_fails_half_way_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "best.ckpt"
    atomic_save({"version": torch.tensor(1)}, target)

    def save_half_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"version": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert load_checkpoint_file(target)["version"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]  # no temp file left behind

    # the same failure with a plain in-place write tears the file: what the atomic write prevents
    with open(target, "wb") as f:
        f.write(b"PK\x03\x04 half a zip archive")
    with pytest.raises(CheckpointError, match=r"best\.ckpt' is truncated or corrupt"):
        load_checkpoint_file(target)


def test_async_writer_saves_a_snapshot_not_the_live_tensors(tmp_path):
    io = AsyncAtomicCheckpointIO()
    weights = torch.zeros(2_000_000)
    for step in range(1, 4):
        weights.fill_(step)
        io.save_checkpoint({"state_dict": {"w": weights}, "global_step": step}, tmp_path / f"s{step}.ckpt")
        weights.fill_(-1)  # training goes on while the file is written
    io.teardown()
    for step in range(1, 4):
        data = io.load_checkpoint(tmp_path / f"s{step}.ckpt")
        assert data["global_step"] == step and torch.equal(data["state_dict"]["w"], torch.full((2_000_000,), step * 1.0))


def test_async_write_errors_name_the_file_at_the_next_call(tmp_path):
    io = AsyncAtomicCheckpointIO()
    (tmp_path / "not_a_folder").write_text("x")
    io.save_checkpoint({"w": torch.ones(3)}, tmp_path / "not_a_folder" / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"writing checkpoint '.*not_a_folder/last\.ckpt' failed"):
        io.save_checkpoint({"w": torch.ones(3)}, tmp_path / "ok.ckpt")
    io.teardown()
    assert not (tmp_path / "ok.ckpt").exists()  # nothing is queued behind a failure


def test_remove_and_load_wait_for_the_pending_write(tmp_path):
    io = AsyncAtomicCheckpointIO()
    target = tmp_path / "a.ckpt"
    io.save_checkpoint({"w": torch.ones(1_000_000)}, target)
    io.remove_checkpoint(target)
    assert not target.exists()  # the write finished first, then the file was removed (not re-created later)
    io.save_checkpoint({"w": torch.ones(5)}, target)
    assert torch.equal(io.load_checkpoint(target)["w"], torch.ones(5))
    io.teardown()


def test_loading_with_weights_only_false_is_refused(tmp_path):
    atomic_save({"w": torch.ones(1)}, tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match="weights_only=False is disabled"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "a.ckpt", weights_only=False)


def test_build_checkpoint_io_modes():
    assert type(build_checkpoint_io("sync")) is AtomicCheckpointIO
    assert type(build_checkpoint_io("async")) is AsyncAtomicCheckpointIO
    with pytest.raises(ValueError, match="checkpoint_io must be 'sync' or 'async'"):
        build_checkpoint_io("fast")


def test_files_get_the_usual_permissions(tmp_path):
    atomic_save({"w": torch.ones(1)}, tmp_path / "a.ckpt")
    umask = os.umask(0)
    os.umask(umask)
    assert (Path(tmp_path / "a.ckpt").stat().st_mode & 0o777) == 0o666 & ~umask


def test_fit_end_hooks_of_the_model_see_the_finished_best_checkpoint(tmp_path, monkeypatch):
    """Lightning tears the strategy down (our teardown waits for the pending write) before `on_fit_end`, so
    code there (e.g. gate calibration reloading best.ckpt) reads the newest file even while writes are slow."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    import fusion.runtime.checkpoints as checkpoint_io

    def slow_atomic_save(obj, path):  # a write that takes a while (large model, slow disk)
        time.sleep(1.0)
        atomic_save(obj, path)

    monkeypatch.setattr(checkpoint_io, "atomic_save", slow_atomic_save)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.seen = None

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def on_fit_end(self):
            try:
                self.seen = load_checkpoint_file(self.trainer.checkpoint_callback.best_model_path)["global_step"]
            except CheckpointError as err:
                self.seen = str(err)

    module = Module()
    callbacks = [ModelCheckpoint(dirpath=tmp_path, filename="best")]
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AsyncAtomicCheckpointIO()], callbacks=callbacks)
    trainer.fit(module, torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=2))
    assert module.seen == 4
