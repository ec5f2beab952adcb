"""train.py's job log ends in the run folder, also when the folder is not Hydra's own (`run_dir=`)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.recipes import REPO


def test_log_moves_into_an_explicit_run_folder(tiny_digits, tmp_path):
    run = tmp_path / "my_run"
    command = [sys.executable, str(REPO / "train.py"), "recipe=late", f"data.manifest={tiny_digits}", f"run_dir={run}",
               "trainer.max_epochs=1", "data.batch_size=16", "trainer.accelerator=cpu",
               "trainer.enable_progress_bar=false"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logs = list(run.glob("train.*-*.log"))
    assert len(logs) == 1 and "test metrics: " in logs[0].read_text()
    # Hydra's default folder (checkpoints/late/<time> under the working folder) is left with nothing in it
    assert not [p for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()]
