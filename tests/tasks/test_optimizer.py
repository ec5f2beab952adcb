"""ClassificationTask's ``optimizer`` choice: AdamW by default, SGD with its momentum, same warm-up + cosine schedule."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from fusion.tasks.classify import ClassificationTask
from tests.helpers.recipes import compose_recipe

CLASSIFICATION = ["early", "late", "progressive"]


def configured(tiny_digits, recipe: str, *overrides: str) -> tuple[torch.optim.Optimizer, object]:
    """The optimizer and scheduler of a recipe's task, with a stand-in trainer of 4 epochs x 10 steps."""
    cfg = compose_recipe(recipe, [f"data.manifest={tiny_digits}", *overrides])
    dm = instantiate(cfg.data)
    dm.prepare()
    task = instantiate(cfg.model, data_spec=dm.spec, _recursive_=False, _convert_="all")
    task.trainer = SimpleNamespace(estimated_stepping_batches=40, max_epochs=4)
    setup = task.configure_optimizers()
    return setup["optimizer"], setup["lr_scheduler"]["scheduler"]


@pytest.mark.parametrize("recipe", CLASSIFICATION)
def test_recipes_mirror_the_optimizer_arguments(recipe):
    model = compose_recipe(recipe).model
    defaults = inspect.signature(ClassificationTask.__init__).parameters
    assert model.optimizer == defaults["optimizer"].default == "adamw"
    assert model.momentum == defaults["momentum"].default == 0.9


def test_adamw_is_the_default(tiny_digits):
    optimizer, _ = configured(tiny_digits, "late")
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-4)


@pytest.mark.parametrize(("momentum", "expected"), [(None, 0.9), ("0", 0.0), ("0.5", 0.5)])
def test_sgd_takes_its_momentum_and_the_same_schedule(tiny_digits, momentum, expected):
    extra = [f"model.momentum={momentum}"] if momentum is not None else []
    optimizer, scheduler = configured(tiny_digits, "progressive", "model.optimizer=sgd", "model.lr=0.1", *extra)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["momentum"] == expected and group["nesterov"] is False
    assert group["weight_decay"] == pytest.approx(1e-4)
    assert group["lr"] == pytest.approx(0.1 * 0.05)  # linear warm-up starts at 5 % of the peak
    rates = []
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert max(rates) == pytest.approx(0.1) and rates.index(max(rates)) == 4  # peak after the 5 warm-up steps (0.5 x 10)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)  # cosine down to 0


def test_unknown_optimizer_names_the_argument(tiny_digits):
    with pytest.raises(ValueError, match="model.optimizer must be 'adamw' or 'sgd', got 'adam'"):
        configured(tiny_digits, "early", "model.optimizer=adam")
