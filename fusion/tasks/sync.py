"""LightningModule for audio-video sync: a thin wrapper around fusion.temporal.sync.SyncModel."""

from __future__ import annotations

import lightning as L
import torch

from fusion.alignment.gather import all_gather_no_grad, is_distributed
from fusion.tasks.epoch_means import EpochMeans
from fusion.temporal.baseline import estimate_offset_xcorr
from fusion.temporal.metrics import sync_report
from fusion.temporal.sync import SyncModel


class SyncTask(L.LightningModule):
    """Trains SyncModel on windows with injected offsets; validation/test report offset errors in ms.

    Args:
        data_spec: from SyncDataModule.spec (max_offset, subframes, n_mels, crop_size, fps, ...).
        hidden_dim: LSTM hidden size per direction.
        embed_dim: matched embedding size.
        max_jump: largest offset change per frame allowed by the CRF.
        frame_loss_weight: weight of the per-frame cross-entropy beside the CRF NLL.
        dropout: dropout before the embedding projections.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, data_spec: dict, hidden_dim: int = 64, embed_dim: int = 64, max_jump: int = 1,
                 frame_loss_weight: float = 1.0, dropout: float = 0.1, lr: float = 2e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SyncModel(max_offset=data_spec["max_offset"], subframes=data_spec["subframes"],
                               n_mels=data_spec["n_mels"], crop_size=data_spec["crop_size"], hidden_dim=hidden_dim,
                               embed_dim=embed_dim, max_jump=max_jump, frame_loss_weight=frame_loss_weight,
                               dropout=dropout)
        self.fps = float(data_spec["fps"])
        self._outputs: list[dict] = []
        self.epoch_means = {"val": EpochMeans(), "test": EpochMeans()}

    def forward(self, batch: dict) -> torch.Tensor:
        """Decoded per-frame offsets (B, T) in frames."""
        return self.model.decode(batch["video"], batch["audio"], batch["frame_mask"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model.loss(batch["video"], batch["audio"], batch["state"], batch["frame_mask"])
        size = batch["state"].shape[0]
        for name in ("loss", "crf_loss", "frame_loss"):
            self.log(f"train/{name}", out[name], prog_bar=name == "loss", batch_size=size)
        return out["loss"]

    def _eval_step(self, batch: dict, stage: str) -> None:
        out = self.model.loss(batch["video"], batch["audio"], batch["state"], batch["frame_mask"])
        self.epoch_means[stage].add(f"{stage}/loss", out["loss"], batch["state"].shape[0])
        paths = self.model.decode(batch["video"], batch["audio"], batch["frame_mask"], emissions=out["emissions"])
        subframes = self.hparams.data_spec["subframes"]
        steps = batch["video"].shape[1]
        audio = batch["audio"].detach().cpu().reshape(batch["audio"].shape[0], steps * subframes, -1)
        baseline = torch.tensor([
            estimate_offset_xcorr(v, a, subframes, self.model.max_offset)
            for v, a in zip(batch["video"].cpu(), audio, strict=True)
        ])
        self._outputs.append({"paths": paths.cpu(), "truth": batch["offset"].cpu(),
                              "drift": batch["drift"].cpu(), "baseline": baseline})

    def _eval_epoch_end(self, stage: str) -> None:
        if not self._outputs:
            if not is_distributed():
                return
            raise RuntimeError(f"{stage}: this process evaluated no windows, so the other processes' report cannot "
                               "be gathered (fewer windows than processes?)")
        local = {k: torch.cat([o[k] for o in self._outputs]) for k in self._outputs[0]}
        self._outputs.clear()
        # under DDP each process holds a shard of the windows: the report is over every process's windows
        joined = {k: all_gather_no_grad(v.to(self.device, torch.uint8 if v.dtype == torch.bool else v.dtype)).cpu()
                  for k, v in local.items()}
        metrics = sync_report(joined["paths"], joined["truth"], joined["drift"].bool(), joined["baseline"], self.fps)
        values = {f"{stage}/{k}": v for k, v in metrics.items()} | self.epoch_means[stage].compute(self.device)
        self.log_dict(values, sync_dist=True)  # identical on every process already

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """`Trainer.predict`: per-frame offsets "path_frames" (B, T) and the window's offset (median of its
        valid frames) in frames and ms, "offset_frames" / "offset_ms" (B,)."""
        mask = batch.get("frame_mask")
        paths = self.model.decode(batch["video"], batch["audio"], mask)  # (B, T)
        valid = torch.ones_like(paths, dtype=torch.bool) if mask is None else mask.bool()
        offsets = torch.stack([p[v].float().median() for p, v in zip(paths, valid, strict=True)])  # (B,)
        return {"path_frames": paths, "offset_frames": offsets, "offset_ms": offsets * 1000.0 / self.fps}

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=total,
                                                       pct_start=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
