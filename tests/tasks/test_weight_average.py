"""The moving average of the weights: its values against the formula, swapping in and out, the sync-free step
updating it, and a run that tests and saves the averaged weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import fusion
from fusion.runtime.checkpoints import load_checkpoint_file
from fusion.tasks.classify import classification_loss
from fusion.tasks.train_step import TrainStep, make_adamw
from fusion.tasks.weight_average import WeightAverage
from fusion.training import train
from tests.helpers.recipes import compose_recipe, tiny_overrides
from tests.tasks.test_train_step import tiny_batch, tiny_model


def test_average_follows_the_formula_with_its_warm_up():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(module, decay=0.9)
    expected = {k: v.clone() for k, v in module.state_dict().items() if v.is_floating_point()}
    for t in range(1, 40):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        module.train()(torch.randn(5, 3))  # batch-norm statistics move too
        average.update()
        keep = min(0.9, (1 + t) / (10 + t))
        for name, value in module.state_dict().items():
            if name in expected:
                expected[name] = keep * expected[name] + (1 - keep) * value
    got = average.averaged_state()
    assert "1.running_mean" in got and "1.num_batches_tracked" not in got
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value)
    assert int(average.updates) == 39


def test_swap_puts_the_average_in_and_takes_it_out():
    module = nn.Linear(4, 3)
    average = WeightAverage(module, decay=0.5)
    with torch.no_grad():
        module.weight.add_(1.0)
    average.update()  # t = 1: keep = min(0.5, 2 / 11)
    trained, averaged = module.weight.detach().clone(), average.averaged_state()["weight"]
    assert not torch.equal(trained, averaged)
    address = module.weight.data_ptr()
    average.swap()
    assert torch.equal(module.weight, averaged) and module.weight.data_ptr() == address
    assert torch.equal(average.averaged_state()["weight"], averaged) and torch.equal(average.live_state()["weight"], trained)
    average.swap()
    assert torch.equal(module.weight, trained) and not average.swapped


def test_stored_average_must_cover_every_tensor():
    with pytest.raises(ValueError, match="lacks"):
        WeightAverage(nn.Linear(2, 2), 0.9, average={"weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        WeightAverage(nn.Linear(2, 2), 1.0)


def test_sync_free_step_updates_the_average_after_each_optimizer_step():
    model, plain = tiny_model(), tiny_model()
    average = WeightAverage(model, decay=0.8)
    reference = {k: v.clone() for k, v in plain.state_dict().items() if v.is_floating_point()}
    loss = lambda r, b: classification_loss(r, b["label"], r.mask, 0.1, 0.5)  # noqa: E731
    step = TrainStep(model, make_adamw(model.parameters(), 1e-2, 1e-4, "cpu"), loss, after_step=average.update)
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=1e-4)
    for t in range(1, 4):
        batch = tiny_batch(t)
        step.step(batch)
        optimizer.zero_grad()
        total, _ = loss(plain.forward_with_details(batch), batch)
        total.backward()
        optimizer.step()
        keep = min(0.8, (1 + t) / (10 + t))
        reference = {k: keep * v + (1 - keep) * plain.state_dict()[k] for k, v in reference.items()}
    got = average.averaged_state()
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)


def test_run_tests_and_saves_the_averaged_weights(tiny_digits, tmp_path):
    """test/loss is the loss of the checkpoint's "model.*" weights (the averaged ones), predicted afresh."""
    run = tmp_path / "run"
    metrics = train(compose_recipe("late", tiny_overrides(tiny_digits, run, "trainer.max_epochs=2",
                                                          "model.weight_average_decay=0.5")))
    best = load_checkpoint_file(next(run.glob("best*.ckpt")))
    live, state = best["weight_average"]["live"], best["state_dict"]
    assert any(not torch.equal(state[f"model.{name}"], value) for name, value in live.items())
    frame = pd.read_csv(tiny_digits, keep_default_na=False)
    test = frame[frame["split"] == "test"]
    predicted = fusion.load(run).predict(test, base=tiny_digits.parent)
    classes = [c[len("prob/"):] for c in predicted.columns if c.startswith("prob/")]
    probs = predicted[[f"prob/{c}" for c in classes]].to_numpy()
    target = np.array([classes.index(str(label)) for label in test["label"]])
    logp = np.log(probs)
    smoothing = 0.1
    losses = -(1 - smoothing) * logp[np.arange(len(target)), target] - smoothing * logp.mean(axis=1)
    assert math.isclose(losses.mean(), metrics["test/loss"], rel_tol=1e-4)
    assert math.isclose((probs.argmax(1) == target).mean(), metrics["test/acc"], abs_tol=1e-6)
