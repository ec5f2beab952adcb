"""Modality dropout: the per-modality losses and the logged gate means use the mask the fusion was given, so a
dropped modality's head is never trained to predict the label from nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from tests.helpers.recipes import compose_recipe


@pytest.mark.parametrize("recipe", ["late", "progressive"])
def test_unimodal_losses_use_the_mask_after_dropout(recipe, tiny_digits, monkeypatch):
    cfg = compose_recipe(recipe, [f"data.manifest={tiny_digits}", "model.modality_dropout=0.6", "model.corruption.p=0"])
    data = instantiate(cfg.data)
    data.prepare()
    task = instantiate(cfg.model, data_spec=data.spec, _recursive_=False, _convert_="all").train()
    task.log = task.log_dict = lambda *args, **kwargs: None
    batch = next(iter(data.train_dataloader()))

    torch.manual_seed(0)
    seen = task.model.forward_with_details(batch).mask
    dropped = {m: int((batch["mask"][m] & ~seen[m]).sum()) for m in seen}
    assert sum(dropped.values()) > 0  # the dropout hid some present modalities in this batch

    rows = []
    cross_entropy = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, labels, **kw: rows.append(len(labels)) or
                        cross_entropy(logits, labels, **kw))
    torch.manual_seed(0)  # the same dropout draw as above
    task._step(batch, "train")
    batch_size = len(batch["label"])
    # first call: the fused loss over the whole batch; then one call per modality decision, on the rows it saw
    assert rows[0] == batch_size
    assert sorted(rows[1:]) == sorted(int(seen[m].sum()) for m in task.model.modalities if bool(seen[m].any()))
    assert all(int(seen[m].sum()) < int(batch["mask"][m].sum()) for m in seen if dropped[m])


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
