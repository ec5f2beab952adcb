"""fusion.fit / fusion.load as a Python user calls them, and Trainer.predict through predict_step."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

import fusion
from fusion.api import overrides_of
from fusion.eval.run_folder import load_run
from fusion.inference.examples import batches, prepare
from tests.helpers.recipes import REPO


def test_import_fusion_is_lazy():
    code = "import sys, fusion; assert 'torch' not in sys.modules and 'fusion.api' not in sys.modules; fusion.load"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_overrides_of_nested_keywords():
    assert overrides_of({"trainer": {"max_epochs": 1, "accelerator": "cpu"}, "seed": 3, "init_from": None,
                         "data": {"modalities": ["image", "audio"], "manifest": "my data/m.csv"}}) == [
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "seed=3", "init_from=null",
        "data.modalities=[image,audio]", "data.manifest='my data/m.csv'"]


def test_fit_a_dataframe(tiny_digits, tmp_path, monkeypatch):
    frame = pd.read_csv(tiny_digits, keep_default_na=False)
    monkeypatch.chdir(tiny_digits.parent)  # the DataFrame's relative paths resolve against the working folder
    run = fusion.fit(frame, recipe="late", run_dir=tmp_path / "run", trainer={"max_epochs": 1, "accelerator": "cpu",
                     "enable_progress_bar": False}, data={"batch_size": 16})
    assert run.run_dir == tmp_path / "run" and "test/acc" in run.metrics
    written = pd.read_csv(run.run_dir / "manifest.csv", keep_default_na=False)
    images = written["image"][written["image"] != ""]
    assert len(images) and images.str.startswith("/").all()
    assert len(run.load().predict(frame[frame["split"] == "test"].head(5))) == 5


def test_trainer_predict_uses_predict_step(tiny_runs, new_manifest):
    loaded = load_run(tiny_runs["progressive"])
    predictor = fusion.load(tiny_runs["progressive"])
    examples = prepare(new_manifest, predictor.preprocessing, predictor.classes)
    loader = list(batches(examples, predictor.preprocessing, predictor.classes, batch_size=8))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    outputs = trainer.predict(loaded.task, dataloaders=DataLoader(loader, batch_size=None))  # batches as they are
    probs = torch.cat([o["probs"] for o in outputs])
    assert probs.shape == (len(examples.rows), 10) and {"logits", "pred", "row", "gate/decision/fused"} <= set(outputs[0])
    expected = predictor.predict(new_manifest)
    assert [predictor.classes[i] for i in torch.cat([o["pred"] for o in outputs]).tolist()] == expected["pred"].tolist()
