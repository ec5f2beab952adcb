"""best.ckpt keeps the latest of equally good epochs, and never a worse one; without a monitored metric it is the
final epoch, which is what the classification recipes select."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fusion.runtime.checkpoints import LatestOnTiesCheckpoint, load_checkpoint_file
from tests.helpers.recipes import compose_recipe


class ScriptedScore(L.LightningModule):
    """Logs a scripted validation score per epoch."""

    def __init__(self, scores: list[float]):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scores = scores

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("scores", "monitor", "mode", "best_epoch"), [
    ([0.5, 1.0, 1.0, 1.0, 0.9], "val/score", "max", 3),  # saturated: the last of the tied epochs, not the first
    ([0.5, 0.8, 0.7, 0.6], "val/score", "max", 1),  # worse epochs never replace it
    ([2.0, 1.0, 1.0, 3.0], "val/score", "min", 2),
    ([0.5, 0.8, 0.7, 0.6], None, "max", 3),  # no monitored metric: the final epoch
])
def test_best_checkpoint_takes_the_latest_tie(tmp_path, scores, monitor, mode, best_epoch):
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    callback = LatestOnTiesCheckpoint(dirpath=tmp_path, filename="best", monitor=monitor, mode=mode,
                                      save_top_k=1, enable_version_counter=False)
    trainer = L.Trainer(max_epochs=len(scores), callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(ScriptedScore(scores), loader, loader)
    assert callback.best_model_path == str(tmp_path / "best.ckpt")
    assert load_checkpoint_file(tmp_path / "best.ckpt")["epoch"] == best_epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]


@pytest.mark.parametrize(("recipe", "monitor"), [
    ("progressive", None), ("early", None), ("late", None), ("xattn", None),  # classifiers: the final epoch
    ("clip", "val/class_R1"), ("sync", "val/offset_mae_ms"),
])
def test_recipes_select_best_checkpoint_by(recipe, monitor):
    cfg = compose_recipe(recipe, ["run_dir=/tmp/unused"])
    assert cfg.callbacks.best_checkpoint.monitor == monitor


def test_early_stopping_still_watches_a_metric_when_best_is_the_final_epoch():
    cfg = compose_recipe("progressive", ["callbacks=early_stopping", "run_dir=/tmp/unused"])
    assert cfg.callbacks.best_checkpoint.monitor is None
    assert (cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.mode) == ("val/acc", "max")
