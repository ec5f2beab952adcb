"""`model.unimodal_loss_inputs=clean`: each modality's own decision learns from every row where the data has the
modality, on its input before training corruption and modality dropout, while the fusion still sees the
corrupted and dropped rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from fusion.errors import ConfigError
from fusion.fusions.blank_inputs import absent_if_blank
from fusion.fusions.model import FusionModel
from fusion.tasks.gate_supervision import gate_supervision_loss
from tests.helpers.recipes import compose_recipe


def build(recipe: str, tiny_digits, inputs: str):
    overrides = [f"data.manifest={tiny_digits}", "model.modality_dropout=0.6", "model.corruption.p=0.6",
                 "model.encoders.audio.augment=false", f"model.unimodal_loss_inputs={inputs}"]
    cfg = compose_recipe(recipe, overrides)
    data = instantiate(cfg.data)
    data.prepare()
    task = instantiate(cfg.model, data_spec=data.spec, _recursive_=False, _convert_="all").train()
    for module in task.modules():  # deterministic passes, so the reference below can recompute them
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    return task, next(iter(data.train_dataloader()))


@pytest.mark.parametrize("recipe", ["late", "progressive", "xattn"])
def test_own_decisions_read_the_clean_input_of_every_present_row(recipe, tiny_digits):
    task, batch = build(recipe, tiny_digits, "clean")
    model = task.model
    torch.manual_seed(0)
    corrupted = task.corruption(batch)
    result = model.forward_with_details(corrupted)

    present = absent_if_blank({m: batch["mask"][m] for m in model.modalities}, batch, model.modalities)
    if model.needs_tokens:  # the clean batch, nothing dropped
        tokens, valid = model.encode_tokens(batch)
        reference = model.fusion.fuse(tokens, present, valid).unimodal_logits
    else:
        reference = model.fusion.fuse(model.encode(batch), present).unimodal_logits
    hit = {m: corrupted["corrupted"][m] & present[m] for m in corrupted["corrupted"]}
    dropped = {m: present[m] & ~result.mask[m] for m in model.modalities}
    assert sum(int(v.sum()) for v in hit.values()) > 0 and sum(int(v.sum()) for v in dropped.values()) > 0
    for m in model.modalities:
        assert torch.equal(result.own_mask[m], present[m]), m
        rows = present[m]
        torch.testing.assert_close(result.own_logits[m][rows], reference[m][rows], rtol=1e-4, atol=1e-4, msg=m)
    # on a corrupted row the fusion's own decision of that modality read the corrupted input
    m = max(hit, key=lambda k: int(hit[k].sum()))
    assert not torch.allclose(result.unimodal_logits[m][hit[m]], reference[m][hit[m]], atol=1e-3)


@pytest.mark.parametrize("recipe", ["late", "progressive"])
def test_own_losses_cover_every_present_row(recipe, tiny_digits):
    task, batch = build(recipe, tiny_digits, "clean")
    torch.manual_seed(0)
    corrupted = task.corruption(batch)
    result = task.model.forward_with_details(corrupted)
    labels, smoothing = batch["label"], task.hparams.label_smoothing
    terms = [F.cross_entropy(result.own_logits[m][result.own_mask[m]], labels[result.own_mask[m]],
                             label_smoothing=smoothing) for m in task.model.modalities if bool(result.own_mask[m].any())]
    expected = (F.cross_entropy(result.logits, labels, label_smoothing=smoothing) + result.aux_loss
                + task.hparams.unimodal_loss_weight * torch.stack(terms).mean()
                + task.hparams.gate_supervision_weight * gate_supervision_loss(result, labels, result.mask))
    total, _ = task._step_loss(result, corrupted)
    torch.testing.assert_close(total, expected)


def test_seen_inputs_add_no_second_pass(tiny_digits):
    task, batch = build("late", tiny_digits, "seen")
    result = task.model.forward_with_details(task.corruption(batch))
    assert result.own_logits == {} and result.own_mask == {}
    assert task.model.eval().forward_with_details(batch).own_logits == {}


def test_unknown_own_inputs_are_refused():
    with pytest.raises(ConfigError, match="unimodal_loss_inputs"):
        FusionModel({}, torch.nn.Identity(), own_inputs="all")
