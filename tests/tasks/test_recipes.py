"""Every recipe composes and instantiates; classification recipes train end to end on tiny data and resume."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from fusion.runtime.checkpoints import load_checkpoint_file
from fusion.training import train
from tests.helpers.recipes import RECIPES, compose_recipe, tiny_overrides

ALL_RECIPES = sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml"))
CLASSIFICATION = ["early", "late", "progressive"]


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_recipe_composes(recipe):
    cfg = compose_recipe(recipe)
    assert cfg.recipe_name == recipe
    assert cfg.model._target_ and cfg.data._target_
    assert {"seed", "ckpt_path", "init_from", "comm_hook", "trainer"} <= set(cfg)


@pytest.mark.parametrize("recipe", CLASSIFICATION)
def test_classification_recipe_instantiates(recipe, tiny_digits):
    cfg = compose_recipe(recipe, [f"data.manifest={tiny_digits}"])
    dm = instantiate(cfg.data)
    dm.prepare()
    task = instantiate(cfg.model, data_spec=dm.spec, _recursive_=False, _convert_="all")
    assert sorted(task.model.encoders) == ["audio", "image", "text"]
    batch = next(iter(dm.train_dataloader()))
    logits = task.model(batch)
    assert logits.shape == (len(batch["label"]), 10)


@pytest.mark.parametrize("recipe", CLASSIFICATION)
def test_fast_dev_run(recipe, tiny_digits, tmp_path):
    cfg = compose_recipe(recipe, tiny_overrides(tiny_digits, tmp_path / "run", "+trainer.fast_dev_run=true"))
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    assert (tmp_path / "run" / "config.yaml").read_text().count("recipe_name: " + recipe) == 1


def test_run_folder_and_resume_continue_the_step_count(tiny_digits, tmp_path):
    run = tmp_path / "run"
    train(compose_recipe("late", tiny_overrides(tiny_digits, run, "trainer.max_epochs=1")))
    for name in ("config.yaml", "last.ckpt", "best.ckpt", "metrics.json", "logs/metrics.csv"):
        assert (run / name).exists(), name
    first = load_checkpoint_file(run / "last.ckpt")
    steps_per_epoch = first["global_step"]
    assert steps_per_epoch == 3  # 48 train rows / batch 16

    resumed = tmp_path / "resumed"
    train(compose_recipe("late", tiny_overrides(tiny_digits, resumed, "trainer.max_epochs=2", f"ckpt_path={run / 'last.ckpt'}")))
    second = load_checkpoint_file(resumed / "last.ckpt")
    assert second["global_step"] == 2 * steps_per_epoch
    assert second["epoch"] == 1
    # the resumed run started from the first run's weights, not from scratch
    key = "model.fusion.heads.audio.0.weight"
    assert not torch.equal(first["state_dict"][key], second["state_dict"][key])


def test_init_from_with_a_new_label_set_keeps_encoders(tiny_digits, tmp_path):
    run = tmp_path / "run"
    train(compose_recipe("early", tiny_overrides(tiny_digits, run, "trainer.max_epochs=1", "+trainer.limit_train_batches=1")))
    # a manifest with a different label set (2 classes) over the same files
    rows = tiny_digits.read_text().splitlines()
    relabelled = [rows[0]] + [",".join(r.split(",")[:1] + [("odd" if "e" in r.split(",")[1] else "even")] + r.split(",")[2:]) for r in rows[1:]]
    (tiny_digits.parent / "binary.csv").write_text("\n".join(relabelled) + "\n")
    cfg = compose_recipe("early", tiny_overrides(tiny_digits.parent / "binary.csv", tmp_path / "ft",
                                                 "trainer.max_epochs=0", f"init_from={run / 'best.ckpt'}"))
    dm = instantiate(cfg.data)
    dm.prepare()
    task = instantiate(cfg.model, data_spec=dm.spec, _recursive_=False, _convert_="all")
    from fusion.runtime.checkpoints import load_matching_weights

    report = load_matching_weights(task, run / "best.ckpt")
    source = load_checkpoint_file(run / "best.ckpt")["state_dict"]
    assert "model.fusion.trunk.6.weight" in report["skipped_shape"]  # the 10-class output layer
    torch.testing.assert_close(task.state_dict()["model.encoders.image.proj.weight"], source["model.encoders.image.proj.weight"])
