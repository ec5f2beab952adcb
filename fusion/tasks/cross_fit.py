"""Cross-fitted decision gate: stacked generalisation (Wolpert 1992) with group folds.

A decision gate trained together with its encoders sees every modality at its training-set reliability. When a
modality generalises poorly to new groups (speech of a speaker absent from training), it looks perfect there,
and the gate learns to trust it. Cross-fitting shows the gate what unseen groups look like: the training rows
are split into folds that keep each group (the manifest's `group` column, e.g. the speaker) together; one model
per fold is trained on the other folds and predicts its held-out fold, which gives an out-of-fold decision of
every modality (and of the fused state) for every training row. After the final model is trained on all rows,
its decision gate, which reads only the decisions (``decision_gate_inputs="confidence"``), is refitted on those
out-of-fold decisions. Rows without a group form a group of their own each.

Cost: ``folds`` extra trainings. Fold runs live in ``<run>/cross_fit/fold<k>/`` (a fold whose run finished and
whose decisions were saved is reused when the run is started again).
"""

from __future__ import annotations

import copy
import csv
import logging
import random
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn

from fusion.data.batches import to_device
from fusion.data.manifest import ManifestRow
from fusion.errors import ConfigError
from fusion.files import atomic_write
from fusion.fusions.base import Fusion
from fusion.runtime.checkpoints import load_checkpoint_file

log = logging.getLogger(__name__)

DECISIONS_FILE = "out_of_fold.pt"


def assign_folds(rows: list[ManifestRow], folds: int, seed: int) -> dict[int, int]:
    """Manifest row number -> fold in [0, folds); all rows of a group share a fold, folds balanced by rows.

    Raises:
        ValueError: naming `cross_fit.folds` when there are fewer groups than folds.
    """
    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(row.group if row.group is not None else f"\0row{row.row}", []).append(row.row)
    if folds < 2 or len(groups) < folds:
        raise ConfigError(f"cross_fit.folds={folds}: needs at least 2 folds and as many groups as folds; "
                         f"the train split has {len(groups)} group(s)")
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    names.sort(key=lambda g: -len(groups[g]))  # largest first, ties in seeded order
    sizes = [0] * folds
    fold_of = {}
    for name in names:
        fold = min(range(folds), key=lambda f: (sizes[f], f))
        sizes[fold] += len(groups[name])
        fold_of.update({number: fold for number in groups[name]})
    return fold_of


def write_fold_manifest(path: Path, train: list[ManifestRow], val: list[ManifestRow], fold_of: dict[int, int],
                        fold: int) -> int:
    """CSV manifest of one fold: other folds' train rows -> train, val -> val, the fold's rows -> test.

    Media paths are written absolute. Returns the number of held-out (test) rows.
    """
    modalities = sorted({m for row in train + val for m in row.media})
    path.parent.mkdir(parents=True, exist_ok=True)
    held_out = 0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "label", "group", *modalities])
        for split, rows in (("train", train), ("val", val)):
            for row in rows:
                in_fold = split == "train" and fold_of[row.row] == fold
                held_out += in_fold
                writer.writerow(["test" if in_fold else split, row.label, row.group or "",
                                 *(row.media.get(m, "") for m in modalities)])
    return held_out


@torch.no_grad()
def collect_decisions(model: nn.Module, loader, device: torch.device | str = "cpu") -> dict:
    """Runs `model` (a FusionModel, eval mode) over `loader`; returns the decisions of every batch, concatenated.

    Returns:
        {"decisions": name -> (N, K), "mask": name -> (N,) bool, "label": (N,), "logits": (N, K) fused output}.
    """
    was_training = model.training
    model.eval()
    decisions, masks, labels, fused = {}, {}, [], []
    try:
        for batch in loader:
            batch = to_device(batch, device)
            result = model.forward_with_details(batch)
            if not result.decision_logits:
                raise ValueError(f"{type(model.fusion).__name__} returns no decision_logits; cross-fitting needs a "
                                 "decision-level gate (progressive fusion)")
            for name, logits in result.decision_logits.items():
                present = batch["mask"].get(name, torch.ones_like(batch["label"], dtype=torch.bool))
                decisions.setdefault(name, []).append(logits.float().cpu())
                masks.setdefault(name, []).append(present.bool().cpu())
            labels.append(batch["label"].cpu())
            fused.append(result.logits.float().cpu())
    finally:
        model.train(was_training)
    return {"decisions": {n: torch.cat(v) for n, v in decisions.items()},
            "mask": {n: torch.cat(v) for n, v in masks.items()}, "label": torch.cat(labels), "logits": torch.cat(fused)}


def merge_decisions(parts: list[dict]) -> dict:
    """Concatenates the outputs of several `collect_decisions` calls (one per fold)."""
    names = parts[0]["decisions"].keys()
    merged = {"decisions": {n: torch.cat([p["decisions"][n] for p in parts]) for n in names},
              "mask": {n: torch.cat([p["mask"][n] for p in parts]) for n in names},
              "label": torch.cat([p["label"] for p in parts])}
    if all("logits" in p for p in parts):
        merged["logits"] = torch.cat([p["logits"] for p in parts])
    return merged


def decision_accuracy(fusion: Fusion, data: dict) -> dict[str, float]:
    """Accuracy of every stored decision where present, and of the gate's combination ("gated")."""
    correct = {n: (d.argmax(1) == data["label"])[data["mask"][n]].float().mean().item() for n, d in data["decisions"].items()}
    with torch.no_grad():
        logits, _ = fusion.combine_decisions(data["decisions"], data["mask"])
    correct["gated"] = (logits.argmax(1) == data["label"]).float().mean().item()
    return {name.lstrip("~"): value for name, value in correct.items()}


def fit_decision_gate(fusion: Fusion, data: dict, epochs: int = 40, lr: float = 3e-3, batch_size: int = 256,
                      label_smoothing: float = 0.0, seed: int = 0) -> list[float]:
    """Fits only the decision gate of `fusion` on stored decisions; returns the mean loss per epoch.

    Args:
        fusion: a fusion whose `decision_gate_module()` is not None.
        data: out-of-fold decisions as returned by `collect_decisions` / `merge_decisions`.
    """
    gate = fusion.decision_gate_module()
    if gate is None:
        raise ValueError(f"{type(fusion).__name__}: no decision gate that reads decisions alone; "
                         "set model.fusion.decision_gate_inputs=confidence")
    device = next(gate.parameters()).device
    decisions = {n: d.to(device) for n, d in data["decisions"].items()}
    masks = {n: m.to(device) for n, m in data["mask"].items()}
    labels = data["label"].to(device)
    optimizer = torch.optim.AdamW(gate.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    was_training = gate.training
    gate.train()
    losses = []
    try:
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=generator).to(device)
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]  # (b,)
                logits, reg = fusion.combine_decisions({n: d[idx] for n, d in decisions.items()},
                                                       {n: m[idx] for n, m in masks.items()})
                loss = F.cross_entropy(logits, labels[idx], label_smoothing=label_smoothing) + reg
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(order))
    finally:
        gate.train(was_training)
        for p in fusion.parameters():
            p.grad = None
    return losses


def out_of_fold_decisions(cfg: DictConfig, run_dir: Path, datamodule, train: Callable) -> dict:
    """Trains one model per group fold of the train split and returns the decisions each made on its held-out
    fold. A fold whose decisions are already saved is not trained again.

    Args:
        cfg: the main run's config; each fold trains with it on its own manifest in `<run>/cross_fit/foldK/`.
        run_dir: the main run's folder.
        datamodule: the main run's prepared datamodule (its train/val rows are split into folds).
        train: `fusion.training.train`, called as `train(fold_cfg, fold_datamodule)`.
    """
    folds = int(cfg.cross_fit.folds)
    train_rows, val_rows = datamodule.datasets["train"].rows, datamodule.datasets["val"].rows
    fold_of = assign_folds(train_rows, folds, int(cfg.seed))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    device = "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"
    parts = []
    for fold in range(folds):
        fold_dir = run_dir / "cross_fit" / f"fold{fold}"
        saved = fold_dir / DECISIONS_FILE
        if not saved.is_file():
            held_out = write_fold_manifest(fold_dir / "manifest.csv", train_rows, val_rows, fold_of, fold)
            log.info("cross_fit fold %d/%d: %d held-out train rows -> %s", fold + 1, folds, held_out, fold_dir)
            fold_cfg = copy.deepcopy(cfg)
            with open_dict(fold_cfg):
                fold_cfg.data.manifest = str(fold_dir / "manifest.csv")
                fold_cfg.data.on_error = "raise"  # rows were checked (and skipped, if asked) by the main run
                fold_cfg.run_dir, fold_cfg.ckpt_path, fold_cfg.cross_fit.folds = str(fold_dir), None, 0
            fold_data = instantiate(fold_cfg.data)
            fold_data.prepare(fold_dir)
            if fold_data.classes != datamodule.classes:
                raise ConfigError(f"cross_fit fold {fold}: its classes {fold_data.classes} differ from the data's "
                                 f"{datamodule.classes}; every class needs train rows outside the test split")
            train(fold_cfg, fold_data)
            task = instantiate(cfg.model, data_spec=fold_data.spec, _recursive_=False, _convert_="all")
            task.load_state_dict(load_checkpoint_file(fold_dir / "best.ckpt")["state_dict"])
            decisions = collect_decisions(task.model.to(device), fold_data.test_dataloader(), device)
            with atomic_write(saved, "wb") as f:
                torch.save(decisions, f)
        parts.append(torch.load(saved, weights_only=True))
    return merge_decisions(parts)


def attach_out_of_fold_decisions(task: nn.Module, cfg: DictConfig, run_dir: Path, datamodule,
                                 train: Callable) -> None:
    """Gives a classification task the out-of-fold decisions its decision gate is refitted on after training."""
    fusion = getattr(getattr(task, "model", None), "fusion", None)
    if not hasattr(task, "out_of_fold") or fusion is None or fusion.decision_gate_module() is None:
        raise ConfigError("cross_fit.folds needs a classifier whose decision gate reads decisions alone: "
                         "recipe=progressive with model.fusion.decision_gate_inputs=confidence")
    task.out_of_fold = out_of_fold_decisions(cfg, run_dir, datamodule, train)
    task.out_of_fold_epochs, task.out_of_fold_lr = int(cfg.cross_fit.epochs), float(cfg.cross_fit.lr)
