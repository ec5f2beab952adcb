"""A run SIGKILLed mid-epoch and resumed with ckpt_path= ends with the same weights and metrics as a run that
was never interrupted (same seed, deterministic CPU settings, random augmentation and modality dropout on)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from fusion.runtime.checkpoints import load_checkpoint_file
from fusion.training import train
from tests.helpers.recipes import REPO, compose_recipe


@pytest.fixture
def deterministic_torch():
    """Lightning's deterministic=True switches torch to deterministic algorithms process-wide; undo it after."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def overrides(tiny_digits, run_dir, *extra: str) -> list[str]:
    return [f"data.manifest={tiny_digits}", f"run_dir={run_dir}", "data.batch_size=16", "trainer.max_epochs=2",
            "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
            "++trainer.enable_model_summary=false", "checkpoint_every_n_steps=2", "++checkpoint_io=async", *extra]


def state_of(path):
    ckpt = load_checkpoint_file(path)
    return ckpt, ckpt["state_dict"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tiny_digits, tmp_path, deterministic_torch):
    # 48 train rows / batch 16 = 3 steps per epoch; step checkpoints at steps 2 and 4; killed right after step 5,
    # i.e. in the middle of the second epoch, with the newest checkpoint taken after its first batch (step 4).
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "tests.reliability.run_training", "late", "--fault", "kill",
               "--fault-after-step", "5", "--threads", str(torch.get_num_threads()),
               *overrides(tiny_digits, killed_dir)]
    victim = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=os.environ | {"PYTHONHASHSEED": "0"})
    try:
        reference = train(compose_recipe("late", overrides(tiny_digits, tmp_path / "uninterrupted")))
        output, _ = victim.communicate(timeout=600)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL, output.decode()[-3000:]
    assert not (killed_dir / "metrics.json").exists()

    on_disk, _ = state_of(killed_dir / "last.ckpt")
    assert on_disk["global_step"] == 4
    loader_position = on_disk["callbacks"]["ExactResumeCallback"]["loaders"][0]
    assert (loader_position["epoch"], loader_position["batches"]) == (1, 1)  # mid-epoch: 1 of 3 batches done
    shutil.copy(killed_dir / "last.ckpt", tmp_path / "resumed_from.ckpt")

    resumed = train(compose_recipe("late", overrides(tiny_digits, killed_dir,
                                                     f"ckpt_path={tmp_path / 'resumed_from.ckpt'}")))

    drop = ("fit_seconds",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in reference.items() if k not in drop}
    assert json.loads((killed_dir / "metrics.json").read_text())["test/acc"] == reference["test/acc"]
    end_a, weights_a = state_of(tmp_path / "uninterrupted" / "last.ckpt")
    end_b, weights_b = state_of(killed_dir / "last.ckpt")
    assert end_a["global_step"] == end_b["global_step"] == 6
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    # the optimizer moments are identical too, so any further training would also continue identically
    for a, b in zip(end_a["optimizer_states"][0]["state"].values(), end_b["optimizer_states"][0]["state"].values(),
                    strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # and the resumed run really started from the mid-epoch checkpoint, not from scratch
    _, start = state_of(tmp_path / "resumed_from.ckpt")
    assert any(not torch.equal(start[k], weights_b[k]) for k in start)
