"""Hostile and broken checkpoints: pickled code is refused without running, truncated/corrupt files and files
of another model give a CheckpointError naming the file, through ckpt_path=, init_from= and Lightning."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from fusion.runtime.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    atomic_save,
    check_resume_checkpoint,
    load_checkpoint_file,
    load_matching_weights,
)
from fusion.training import train
from tests.helpers.recipes import compose_recipe


class RunsCode:
    """Unpickling this would create a marker file (stands for any code an attacker wants to run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Tiny(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.layer = nn.Linear(3, width)


def lightning_like(module: nn.Module) -> dict:
    return {"state_dict": module.state_dict(), "loops": {}, "optimizer_states": [], "global_step": 0, "epoch": 0,
            "hyper_parameters": {"lr": 0.1, "encoders": {"image": {"_target_": "x.Y"}}}}


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.ckpt"
    atomic_save(lightning_like(Tiny()), path)
    return path


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Tiny().state_dict(), "payload": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt' was refused: it carries objects other than tensors"):
        load_checkpoint_file(evil)
    with pytest.raises(CheckpointError, match="was refused"):
        load_matching_weights(Tiny(), evil)
    with pytest.raises(CheckpointError, match="was refused"):
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()
    # the control: an unrestricted load of the same file does run the code
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "random", "empty", "text"])
def test_damaged_files_name_the_file(good, damage):
    blob = good.read_bytes()
    if damage == "truncated":
        good.write_bytes(blob[: len(blob) // 2])
    elif damage == "flipped":
        middle = len(blob) // 2
        good.write_bytes(blob[:middle] + bytes(b ^ 0xFF for b in blob[middle : middle + 64]) + blob[middle + 64 :])
    elif damage == "random":
        good.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    elif damage == "empty":
        good.write_bytes(b"")
    else:
        good.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=rf"'{good}'.*(corrupt|refused|does not hold)"):
        load_checkpoint_file(good)


@pytest.mark.parametrize("where", ["missing", "directory", "/dev/null", "/dev/zero"])
def test_paths_that_are_not_files(tmp_path, where):
    path = {"missing": tmp_path / "nope.ckpt", "directory": tmp_path}.get(where, Path(where))
    with pytest.raises(CheckpointError, match="does not exist or is not a file"):
        load_checkpoint_file(path)


def test_not_a_dict_and_wrong_model(tmp_path, good):
    torch.save([torch.ones(2)], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="does not hold a dict"):
        load_checkpoint_file(tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match=r"does not match this model \(other shape: \['layer.bias', 'layer.weight'\]"):
        check_resume_checkpoint(Tiny(width=5), good)
    torch.save({"state_dict": Tiny().state_dict()}, tmp_path / "weights.ckpt")
    with pytest.raises(CheckpointError, match="not a full training checkpoint .* use init_from= instead"):
        check_resume_checkpoint(Tiny(), tmp_path / "weights.ckpt")
    assert check_resume_checkpoint(Tiny(), good)["global_step"] == 0
    with pytest.raises(CheckpointError, match="no weight matches this model"):
        load_matching_weights(nn.Conv1d(1, 1, 1), good)


def test_lightning_test_with_a_hostile_ckpt_path_fails_cleanly(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, tmp_path / "evil.ckpt")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def test_step(self, batch, batch_idx):
            return None

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        plugins=[AtomicCheckpointIO()])
    loader = torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=2)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt' was refused"):
        trainer.test(Module(), dataloaders=loader, ckpt_path=tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_train_refuses_hostile_resume_and_init_files_before_training(tiny_digits, tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, tmp_path / "evil.ckpt")
    base = [f"data.manifest={tiny_digits}", "data.batch_size=16", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]
    for key in ("ckpt_path", "init_from"):
        run = tmp_path / key
        with pytest.raises(CheckpointError, match=r"evil\.ckpt' was refused"):
            train(compose_recipe("late", [*base, f"run_dir={run}", f"{key}={tmp_path / 'evil.ckpt'}"]))
        assert not (run / "last.ckpt").exists()
    truncated = tmp_path / "truncated.ckpt"
    atomic_save(lightning_like(Tiny()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt' is truncated or corrupt"):
        train(compose_recipe("late", [*base, f"run_dir={tmp_path / 'r'}", f"ckpt_path={truncated}"]))
    with pytest.raises(CheckpointError, match=r"ckpt_path '.*good\.ckpt' does not match this model"):
        atomic_save(lightning_like(Tiny()), tmp_path / "good.ckpt")
        train(compose_recipe("late", [*base, f"run_dir={tmp_path / 'r2'}", f"ckpt_path={tmp_path / 'good.ckpt'}"]))
    assert not marker.exists()
