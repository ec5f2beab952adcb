"""LightningModule for multimodal classification: a thin wrapper around FusionModel."""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from hydra.utils import instantiate

from fusion.data.corruption import CorruptionAugment
from fusion.encoders.finetune import pretrained_lr_scales, scaled_groups
from fusion.encoders.towers import encoder_config
from fusion.errors import ConfigError
from fusion.fusions.base import FusionResult
from fusion.fusions.model import FusionModel
from fusion.runtime.checkpoints import load_checkpoint_file
from fusion.tasks.cross_fit import decision_accuracy, fit_decision_gate
from fusion.tasks.epoch_means import EpochMeans
from fusion.tasks.gate_supervision import gate_supervision_loss
from fusion.tasks.train_step import MODES as STEP_MODES
from fusion.tasks.train_step import TrainStep, make_adamw

log = logging.getLogger(__name__)


def build_fusion_model(data_spec: dict, encoders: dict, fusion: dict, modality_dropout: float = 0.0,
                       single_modality_fallback: bool = False, blank_as_absent: bool = False,
                       own_inputs: str = "seen") -> FusionModel:
    """Instantiates the encoders of the data's modalities (a config, or a tower name such as "tv:resnet18") and a
    fusion over their output sizes (`single_modality_fallback`, `blank_as_absent`, `own_inputs`: see FusionModel)."""
    missing = [m for m in data_spec["modalities"] if m not in encoders]
    if missing:
        raise ConfigError(f"model.encoders has no config for modality {missing} present in the data")
    built = {m: instantiate(encoder_config(m, encoders[m])) for m in data_spec["modalities"]}
    fusion_module = instantiate(fusion, modality_dims={m: e.out_dim for m, e in built.items()},
                                num_classes=data_spec["num_classes"])
    return FusionModel(built, fusion_module, modality_dropout, single_modality_fallback, blank_as_absent, own_inputs)


def classification_loss(result: FusionResult, labels: torch.Tensor, mask: dict[str, torch.Tensor],
                        label_smoothing: float = 0.0, unimodal_weight: float = 0.0,
                        gate_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training objective without host synchronisation: (total, fused cross-entropy), both scalars.

    total = CE(fused logits) + the fusion's aux loss + ``unimodal_weight`` x the mean, over the modalities present
    in at least one sample, of each head's CE (``result.own_logits`` where set, else ``unimodal_logits``) over the
    samples where its modality is present (``mask``: modality -> (B,) bool) + ``gate_weight`` x the last gate's
    supervision loss (fusion/tasks/gate_supervision.py; over the modalities the fusion saw, ``result.mask``,
    corrupted rows included). Masked sums instead of boolean indexing, so no step reads a tensor value on the host.
    """
    loss = F.cross_entropy(result.logits, labels, label_smoothing=label_smoothing)
    total = loss + result.aux_loss
    if gate_weight:
        total = total + gate_weight * gate_supervision_loss(result, labels, result.mask or mask)
    own = result.own_logits or result.unimodal_logits
    if unimodal_weight and own:
        terms, present_any = [], []
        for m, logits in own.items():
            present = mask[m].to(logits.dtype)  # (B,)
            count = present.sum()
            per_sample = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="none")  # (B,)
            terms.append((per_sample * present).sum() / count.clamp_min(1.0))
            present_any.append((count > 0).to(logits.dtype))
        terms, present_any = torch.stack(terms), torch.stack(present_any)  # (M,), (M,)
        total = total + unimodal_weight * (terms * present_any).sum() / present_any.sum().clamp_min(1.0)
    return total, loss


def clean_rows(seen: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
    """modality -> (B,) bool: the rows where the modality was seen and not corrupted by training corruption
    (``batch["corrupted"]``, see CorruptionAugment): a modality's own loss learns from clean inputs, the gates and
    fused layers also from corrupted ones."""
    corrupted = batch.get("corrupted", {})
    return {m: seen[m] & ~corrupted[m] if m in corrupted else seen[m] for m in seen}


class ClassificationTask(L.LightningModule):
    """Trains a FusionModel with cross-entropy on the fused logits plus auxiliary per-modality losses.

    Args:
        data_spec: {"modalities", "num_classes", "classes"} from the datamodule.
        encoders: modality -> encoder config (`_target_` + arguments).
        fusion: fusion config (`_target_` + arguments; modality_dims and num_classes are filled in).
        modality_dropout: share of training samples shown only a random proper subset of their modalities.
        single_modality_fallback: a sample with one modality present gets that modality's decision (FusionModel).
        blank_as_absent: a row whose dense input is one constant value counts as that modality missing.
        corruption: training corruption of one modality per sample (fields of fusion.data.corruption.CorruptionAugment).
        unimodal_loss_weight: weight of the mean cross-entropy of per-modality decisions (if the fusion has them).
        unimodal_loss_inputs: "seen" (the rows the fusion saw, clean ones only) or "clean" (every row with the
            modality, on its input before training corruption and modality dropout; FusionModel.own_inputs).
        gate_supervision_weight: weight of the last gate's supervision by which decision is right
            (fusion/tasks/gate_supervision.py); 0 turns it off.
        lr: peak learning rate of the schedule.
        weight_decay: weight decay (decoupled for AdamW; for SGD added to the gradient as L2 by the optimizer).
        optimizer: "adamw" or "sgd" (SGD with ``momentum``).
        momentum: SGD momentum (ignored by AdamW).
        warmup_epochs: linear warm-up before the cosine decay (fractional epochs allowed).
        label_smoothing: label smoothing of every cross-entropy term (keeps heads from over-confidence).
        train_step: "lightning" (Lightning's optimisation loop) or a mode of fusion/tasks/train_step.py: "eager",
            "compile", "graph" (the whole step one CUDA graph) or "compile_graph" (that graph around the compiled
            forward): the sync-free step with fused AdamW; training
            loss and accuracy are then logged per epoch (not per step) and gate means are not logged.
    """

    def __init__(self, data_spec: dict, encoders: dict, fusion: dict, modality_dropout: float = 0.3,
                 unimodal_loss_weight: float = 1.0, lr: float = 2e-3, weight_decay: float = 1e-4,
                 warmup_epochs: float = 0.5, label_smoothing: float = 0.1,
                 optimizer: str = "adamw", momentum: float = 0.9, corruption: dict | None = None,
                 train_step: str = "lightning", single_modality_fallback: bool = False,
                 gate_supervision_weight: float = 0.0, blank_as_absent: bool = False,
                 unimodal_loss_inputs: str = "seen"):
        super().__init__()
        self.save_hyperparameters()
        if train_step not in ("lightning", *STEP_MODES):
            raise ConfigError(f"model.train_step must be 'lightning' or one of {list(STEP_MODES)}, got {train_step!r}")
        if train_step != "lightning" and optimizer != "adamw":
            raise ConfigError(f"model.train_step={train_step} uses fused AdamW; it needs model.optimizer=adamw")
        self.automatic_optimization = train_step == "lightning"
        self._stepper: TrainStep | None = None
        self.model = build_fusion_model(data_spec, encoders, fusion, modality_dropout, single_modality_fallback,
                                        blank_as_absent, unimodal_loss_inputs)
        self.corruption = CorruptionAugment(**(corruption or {}))
        k = data_spec["num_classes"]
        metrics = torchmetrics.MetricCollection({
            "acc": torchmetrics.Accuracy(task="multiclass", num_classes=k),
            "f1": torchmetrics.F1Score(task="multiclass", num_classes=k, average="macro"),
        })
        self.out_of_fold: dict | None = None  # set by train() with cross_fit.folds > 1
        self.out_of_fold_epochs, self.out_of_fold_lr = 40, 3e-3
        self.out_of_fold_report: dict[str, float] = {}
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.epoch_means = {"train": EpochMeans(), "val": EpochMeans(), "test": EpochMeans()}  # gate weights, ...

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        if stage == "train":
            batch = self.corruption(batch)
        result = self.model.forward_with_details(batch)
        labels = batch["label"]
        seen = result.mask  # after modality dropout: a dropped modality's head saw nothing
        total, loss = self._step_loss(result, batch)
        batch_size = labels.shape[0]
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(result.logits.detach(), labels)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=batch_size)
        if stage == "train":  # per process; evaluation values below are exact over every process
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
            for name, (weights, present) in self._gate_weights(result, seen, labels).items():  # summed on the device
                self.epoch_means["train"].add_sum(f"train/gate/{name}", (weights.detach() * present).sum(), present.sum())
            return total
        means = self.epoch_means[stage]
        means.add(f"{stage}/loss", loss, batch_size)
        for name, logits in (result.decision_logits or result.unimodal_logits).items():
            present = batch["mask"].get(name, torch.ones_like(labels, dtype=torch.bool))
            correct = (logits.detach().argmax(1) == labels)[present].float()  # (present,)
            means.add(f"{stage}/decision_acc/{name.lstrip('~')}", correct.mean(), correct.numel())
        for name, (weights, present) in self._gate_weights(result, seen, labels).items():
            means.add(f"{stage}/gate/{name}", weights.detach()[present].mean(), int(present.sum()))
        return total

    @staticmethod
    def _gate_weights(result, mask: dict, labels: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Gate name -> (weights (B,), rows where the weighted modality was present (B,) bool)."""
        pairs = {}
        for name, weights in result.gate_weights.items():
            modality = name.split("/")[-1]
            pairs[name] = (weights, mask[modality] if modality in mask else torch.ones_like(labels, dtype=torch.bool))
        return pairs

    def _log_epoch_means(self, stage: str) -> None:
        """Logs the stage's loss, decision accuracies and gate weights, reduced over every process."""
        values = self.epoch_means[stage].compute(self.device)
        loss = values.pop(f"{stage}/loss", None)
        # already identical on every process: sync_dist only keeps Lightning's distributed bookkeeping quiet
        self.log_dict(values, prog_bar=False, sync_dist=True)
        if loss is not None:
            self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        if self._stepper is not None:  # one host read per epoch
            stats = self._stepper.take_stats()
            self.log_dict({"train/loss": stats["loss"], "train/acc": stats["acc"]}, sync_dist=True)
        self._log_epoch_means("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self._step(batch, "train")
        optimizer = self.optimizers()
        if self._stepper is None:
            trainer = self.trainer
            if trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val:
                raise ConfigError(f"model.train_step={self.hparams.train_step} does its own optimizer step: leave "
                                  "trainer.accumulate_grad_batches=1 and trainer.gradient_clip_val=null")
            self._stepper = TrainStep(self.model, optimizer.optimizer, self._step_loss, mode=self.hparams.train_step)
        optimizer._on_before_step()  # Lightning's step counter (global_step) in manual optimisation
        self._stepper.step(self.corruption(batch))
        optimizer._on_after_step()
        self.lr_schedulers().step()
        return None

    def _step_loss(self, result: FusionResult, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        own_rows = result.own_mask if result.own_logits else clean_rows(result.mask, batch)
        return classification_loss(result, batch["label"], own_rows, self.hparams.label_smoothing,
                                   self.hparams.unimodal_loss_weight, self.hparams.gate_supervision_weight)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """`Trainer.predict`: logits (B, K), probabilities (B, K), prediction (B,), gate weights by
        "gate/<stage>/<modality>" (B,) and the manifest row numbers."""
        result = self.model.forward_with_details(batch)
        out = {"logits": result.logits, "probs": result.logits.float().softmax(dim=1), "pred": result.logits.argmax(1)}
        out.update({f"gate/{name}": weights for name, weights in result.gate_weights.items()})
        if "row" in batch:
            out["row"] = batch["row"]
        return out

    def on_fit_end(self) -> None:
        """With cross-fitting, refits the decision gate of the best weights on out-of-fold decisions and rewrites
        the best checkpoint."""
        if self.out_of_fold is None:
            return
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else ""
        if best:
            self.load_state_dict(load_checkpoint_file(best)["state_dict"])
        fusion = self.model.fusion
        before = decision_accuracy(fusion, self.out_of_fold)
        losses = fit_decision_gate(fusion, self.out_of_fold, self.out_of_fold_epochs, self.out_of_fold_lr,
                                   label_smoothing=self.hparams.label_smoothing)
        after = decision_accuracy(fusion, self.out_of_fold)
        self.out_of_fold_report = {**{f"cross_fit/oof_acc/{k}": v for k, v in before.items() if k != "gated"},
                                   "cross_fit/oof_acc/gated_before": before["gated"],
                                   "cross_fit/oof_acc/gated_after": after["gated"]}
        log.info(f"cross_fit: decision gate refitted on {len(self.out_of_fold['label'])} out-of-fold rows; "
                 f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; accuracy {self.out_of_fold_report}")
        if best:
            self.trainer.save_checkpoint(best)

    def configure_optimizers(self):
        hparams = self.hparams
        scales = pretrained_lr_scales(self)  # pretrained towers: their own (layer-wise) learning rates
        params = scaled_groups(self.named_parameters(), scales, hparams.lr) if scales else self.parameters()
        if hparams.optimizer == "adamw" and hparams.get("train_step", "lightning") != "lightning":
            optimizer = make_adamw(params, hparams.lr, hparams.weight_decay, self.device)  # fused, capturable
        elif hparams.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hparams.lr, weight_decay=hparams.weight_decay)
        elif hparams.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hparams.lr, momentum=hparams.momentum,
                                        weight_decay=hparams.weight_decay)
        else:
            raise ConfigError(f"model.optimizer must be 'adamw' or 'sgd', got {hparams.optimizer!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total - 1, int(self.hparams.warmup_epochs * steps_per_epoch))
        schedule = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.05, total_iters=max(1, warmup)),
             torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))],
            milestones=[max(1, warmup)])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
