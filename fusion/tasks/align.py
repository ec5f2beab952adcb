"""LightningModule for contrastive alignment (``recipe=clip``): a thin wrapper around AlignmentModel."""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from fusion.alignment.gather import all_gather_no_grad
from fusion.alignment.loss import TOTAL_KEY, ContrastiveLoss
from fusion.alignment.model import AlignmentModel
from fusion.alignment.projection import ProjectionHead
from fusion.alignment.retrieval import (
    alignment_report,
    class_prototypes,
    prompt_prototypes,
    zero_shot_accuracy,
)
from fusion.encoders.finetune import pretrained_lr_scales
from fusion.encoders.towers import encoder_config

DEFAULT_PROMPTS = ("the digit {}", "a spoken {}", "a handwritten {}", "the number {}")


class AlignmentTask(L.LightningModule):
    """Trains modality towers with the multi-pair CLIP loss; evaluates retrieval and zero-shot accuracy.

    Test metrics (all under ``test/``): per direction ``<q>_to_<g>/{Rk,median_rank,class_Rk,
    class_median_rank}``, per pair ``<a>_<b>/{matched_cos,unmatched_cos}``, their ``mean/*``, zero-shot
    accuracy from text prompts ``zero_shot_text/<modality>_acc`` and from class prototypes of the training
    set ``zero_shot_proto/<query>_by_<prototype>_acc``.

    Args:
        data_spec: ``{"modalities": [...], "num_classes": C, "classes": [...]}`` from the datamodule.
        encoders: modality -> encoder config with ``_target_`` (same format as the fusion recipes); only
            modalities present in the data are built.
        embed_dim: size of the shared space.
        projection: keyword arguments of ``ProjectionHead`` besides in/out sizes (``hidden_dim``, ``dropout``).
        loss: keyword arguments of ``ContrastiveLoss``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases, norms and the logit scale).
        warmup_epochs: linear warm-up before the cosine decay (per step).
        prompts: templates for zero-shot prototypes, ``{}`` = class name; empty = no prompt zero-shot.
        class_words: optional class name -> word used in prompts (e.g. "7" -> "seven").
        prototype_batches: training batches used to build class prototypes at test time (0 = off).
        ks: the k of Rk.
    """

    def __init__(
        self,
        data_spec: dict,
        encoders: dict,
        embed_dim: int = 768,
        projection: dict | None = None,
        loss: dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 0.5,
        prompts: list[str] | None = None,
        class_words: dict | None = None,
        prototype_batches: int = 20,
        ks: tuple[int, ...] = (1, 5, 10),
    ):
        super().__init__()
        self.save_hyperparameters()
        modalities = [m for m in sorted(data_spec["modalities"]) if m in encoders]
        if len(modalities) < 2:
            raise ValueError(
                f"model.encoders must cover at least two of the data's modalities {data_spec['modalities']}, "
                f"got {sorted(encoders)}"
            )
        towers = nn.ModuleDict({m: instantiate(encoder_config(m, encoders[m])) for m in modalities})
        heads = nn.ModuleDict(
            {m: ProjectionHead(towers[m].out_dim, embed_dim, **(projection or {})) for m in modalities}
        )
        self.model = AlignmentModel(towers, heads)
        self.loss = ContrastiveLoss(**(loss or {}))
        self.classes = list(data_spec.get("classes", []))
        self.prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
        self.class_words = {str(k): str(v) for k, v in (class_words or {}).items()}
        self.prototype_batches = prototype_batches
        self.ks = tuple(ks)
        self._outputs: list[dict] = []

    # ---- training ---------------------------------------------------------------------------------------
    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        embeddings = self.model(batch)  # modality -> (B, E)
        terms = self.loss(embeddings, batch["mask"])
        batch_size = batch["label"].shape[0]
        for name, value in terms.items():
            key = "loss" if name == TOTAL_KEY else name
            self.log(
                f"{stage}/{key}",
                value,
                batch_size=batch_size,
                sync_dist=stage != "train",
                prog_bar=name == TOTAL_KEY,
            )
        if stage == "train":
            self.log("train/logit_scale", self.loss.scale().detach(), batch_size=batch_size)
        else:
            self._outputs.append(
                {
                    "embeddings": {m: z.detach() for m, z in embeddings.items()},
                    "mask": {m: batch["mask"][m] for m in embeddings},
                    "label": batch["label"],
                }
            )
        return terms[TOTAL_KEY]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.loss.clamp_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """`Trainer.predict`: "embedding/<modality>" (B, E) for every modality and "mask/<modality>" (B,) (rows
        whose modality is missing hold the placeholder's embedding)."""
        embeddings = self.model(batch)  # modality -> (B, E)
        return {**{f"embedding/{m}": z for m, z in embeddings.items()},
                **{f"mask/{m}": batch["mask"][m] for m in embeddings}}

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    # ---- evaluation -------------------------------------------------------------------------------------
    def _collected(self) -> tuple[dict, dict, torch.Tensor]:
        outs = self._outputs
        embeddings = {
            m: all_gather_no_grad(torch.cat([o["embeddings"][m] for o in outs]))
            for m in outs[0]["embeddings"]
        }
        mask = {
            m: all_gather_no_grad(torch.cat([o["mask"][m] for o in outs]).to(torch.uint8)).bool()
            for m in embeddings
        }
        labels = all_gather_no_grad(torch.cat([o["label"] for o in outs]))
        return embeddings, mask, labels

    def on_validation_epoch_end(self) -> None:
        if not self._outputs or self.trainer.sanity_checking:
            self._outputs = []
            return
        embeddings, mask, labels = self._collected()
        report = alignment_report(embeddings, mask, labels, ks=(1,))
        for key in ("mean/R1", "mean/class_R1"):
            if key in report:
                self.log(f"val/{key.split('/', 1)[1]}", report[key], sync_dist=False)
        self._outputs = []

    def on_test_epoch_end(self) -> None:
        if not self._outputs:
            return
        embeddings, mask, labels = self._collected()
        metrics = alignment_report(embeddings, mask, labels, ks=self.ks)
        metrics |= self._prompt_zero_shot(embeddings, mask, labels)
        metrics |= self._prototype_zero_shot(embeddings, mask, labels)
        for key, value in sorted(metrics.items()):
            self.log(f"test/{key}", value, sync_dist=False)
        self._outputs = []

    def _datamodule(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    @torch.no_grad()
    def prompt_prototypes(self, tokenizer, max_length: int) -> torch.Tensor:
        """Text-tower prototypes of every class, averaged over the prompt templates: (C, E)."""
        words = [self.class_words.get(c, c) for c in self.classes]
        texts = [template.format(word) for word in words for template in self.prompts]
        tokens = {k: v.to(self.device) for k, v in tokenizer(texts, max_length).items()}  # (C*P, T)
        was_training = self.model.training
        self.model.eval()
        z = self.model.embed_modality("text", tokens)  # (C*P, E)
        self.model.train(was_training)
        return prompt_prototypes(z.view(len(words), len(self.prompts), -1))

    def _prompt_zero_shot(self, embeddings: dict, mask: dict, labels: torch.Tensor) -> dict[str, float]:
        dm = self._datamodule()
        tokenizer = getattr(dm, "tokenizer", None)
        if "text" not in self.model.encoders or not self.prompts or not self.classes or tokenizer is None:
            return {}
        prototypes = self.prompt_prototypes(tokenizer, getattr(dm, "max_text_length", 40))
        return {
            f"zero_shot_text/{m}_acc": zero_shot_accuracy(z[mask[m]], labels[mask[m]], prototypes)
            for m, z in embeddings.items()
            if m != "text" and bool(mask[m].any())
        }

    @torch.no_grad()
    def _prototype_zero_shot(self, embeddings: dict, mask: dict, labels: torch.Tensor) -> dict[str, float]:
        dm = self._datamodule()
        if self.prototype_batches <= 0 or dm is None or not self.classes:
            return {}
        sums, train_mask, train_labels = [], [], []
        was_training = self.model.training
        self.model.eval()
        for i, batch in enumerate(dm.train_dataloader()):
            if i >= self.prototype_batches:
                break
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            sums.append(self.model(batch))
            train_mask.append(batch["mask"])
            train_labels.append(batch["label"])
        self.model.train(was_training)
        if not sums:
            return {}
        num_classes = len(self.classes)
        labels_all = torch.cat(train_labels)
        out = {}
        for p in embeddings:
            present = torch.cat([m[p] for m in train_mask])
            z = torch.cat([s[p] for s in sums])[present]
            if torch.bincount(labels_all[present], minlength=num_classes).min() == 0:
                continue
            prototypes = class_prototypes(z, labels_all[present], num_classes)  # (C, E)
            for q, zq in embeddings.items():
                if bool(mask[q].any()):
                    acc = zero_shot_accuracy(zq[mask[q]], labels[mask[q]], prototypes)
                    out[f"zero_shot_proto/{q}_by_{p}_acc"] = acc
        return out

    # ---- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self):
        scales = pretrained_lr_scales(self)  # pretrained towers: their own (layer-wise) learning rates
        groups: dict[tuple[bool, float], list] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            decays = not (param.ndim < 2 or name.startswith("loss."))
            groups.setdefault((decays, float(scales.get(name, 1.0))), []).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": params, "lr": self.hparams.lr * scale,
                 "weight_decay": self.hparams.weight_decay if decays else 0.0}
                for (decays, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))
            ],
            lr=self.hparams.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total - 1, int(self.hparams.warmup_epochs * steps_per_epoch))
        schedule = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [
                torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=max(1, warmup)),
                torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup)),
            ],
            milestones=[max(1, warmup)],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
