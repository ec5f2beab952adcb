"""best.ckpt selection that keeps the latest of equally good checkpoints.

Lightning's ModelCheckpoint replaces its best checkpoint only on a strictly better score, so once a validation
metric saturates (e.g. 100 % accuracy on a validation split that is easy for one modality) best.ckpt stays at
the first epoch that reached it, however much the model improves afterwards on what the metric cannot see
(the other modalities' own decisions, calibration). Here a tie also replaces it: the later weights win.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class LatestOnTiesCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose top-k also admits a score equal to the k-th best (the newer checkpoint replaces it)."""

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is None or self.save_top_k in (-1, 0) or len(self.best_k_models) < self.save_top_k:
            return super().check_monitor_top_k(trainer, current)
        monitor_op = {"min": torch.le, "max": torch.ge}[self.mode]
        better_or_equal = bool(monitor_op(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(better_or_equal)
