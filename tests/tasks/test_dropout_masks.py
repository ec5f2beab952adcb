"""Modality dropout: the per-modality losses and the logged gate means use the mask the fusion was given, so a
dropped modality's head is never trained to predict the label from nothing; a row whose modality training
corruption hit stays out of that modality's loss too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from fusion.fusions.base import FusionResult
from fusion.tasks.classify import classification_loss, clean_rows
from fusion.tasks.gate_supervision import gate_supervision_loss
from tests.helpers.recipes import compose_recipe


@pytest.mark.parametrize("recipe", ["late", "progressive"])
def test_unimodal_losses_use_the_mask_after_dropout(recipe, tiny_digits, monkeypatch):
    cfg = compose_recipe(recipe, [f"data.manifest={tiny_digits}", "model.modality_dropout=0.6", "model.corruption.p=0",
                                  "model.unimodal_loss_inputs=seen"])
    data = instantiate(cfg.data)
    data.prepare()
    task = instantiate(cfg.model, data_spec=data.spec, _recursive_=False, _convert_="all").train()
    task.log = task.log_dict = lambda *args, **kwargs: None
    batch = next(iter(data.train_dataloader()))

    torch.manual_seed(0)
    seen = task.model.forward_with_details(batch).mask
    dropped = {m: int((batch["mask"][m] & ~seen[m]).sum()) for m in seen}
    assert sum(dropped.values()) > 0  # the dropout hid some present modalities in this batch

    torch.manual_seed(0)  # the same dropout draw as above
    result = task.model.forward_with_details(batch)
    labels, smoothing = batch["label"], task.hparams.label_smoothing
    # the per-modality terms over the rows each head saw (boolean indexing: the reference, not the implementation)
    terms = [F.cross_entropy(result.unimodal_logits[m][seen[m]], labels[seen[m]], label_smoothing=smoothing)
             for m in task.model.modalities if bool(seen[m].any())]
    expected = (F.cross_entropy(result.logits, labels, label_smoothing=smoothing) + result.aux_loss
                + task.hparams.unimodal_loss_weight * torch.stack(terms).mean()
                + task.hparams.gate_supervision_weight * gate_supervision_loss(result, labels, seen))  # over what it saw
    torch.manual_seed(0)
    total = task._step(batch, "train")
    torch.testing.assert_close(total, expected)
    # over the rows before dropout the unimodal terms differ: the mask after dropout is the one used
    stale = [F.cross_entropy(result.unimodal_logits[m][batch["mask"][m]], labels[batch["mask"][m]],
                             label_smoothing=smoothing) for m in task.model.modalities]
    assert not torch.allclose(torch.stack(terms).mean(), torch.stack(stale).mean())


def test_gate_weight_of_a_dropped_modality_is_zero(tiny_digits):
    cfg = compose_recipe("late", [f"data.manifest={tiny_digits}", "model.modality_dropout=0.6", "model.corruption.p=0"])
    data = instantiate(cfg.data)
    data.prepare()
    model = instantiate(cfg.model, data_spec=data.spec, _recursive_=False, _convert_="all").model.train()
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    result = model.forward_with_details(batch)
    for name, weights in result.gate_weights.items():
        modality = name.split("/")[-1]
        assert torch.all(weights.detach()[~result.mask[modality]] == 0), name


def test_a_corrupted_row_leaves_its_modalitys_own_loss():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1, 2, 0])
    heads = {"audio": torch.randn(4, 3, generator=g), "image": torch.randn(4, 3, generator=g)}
    result = FusionResult(torch.randn(4, 3, generator=g), unimodal_logits=heads)
    seen = {"audio": torch.tensor([True, True, False, True]), "image": torch.ones(4, dtype=torch.bool)}
    batch = {"corrupted": {"audio": torch.tensor([False, True, False, False]), "image": torch.tensor([True, False, False, False])}}
    rows = clean_rows(seen, batch)
    assert rows["audio"].tolist() == [True, False, False, True] and rows["image"].tolist() == [False, True, True, True]
    total, fused = classification_loss(result, labels, rows, unimodal_weight=1.0)
    ce = lambda m, r: torch.nn.functional.cross_entropy(heads[m][r], labels[r])  # noqa: E731
    expected = fused + (ce("audio", [0, 3]) + ce("image", [1, 2, 3])) / 2
    torch.testing.assert_close(total, expected)
