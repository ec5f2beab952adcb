"""A blank input (one constant value: a silent clip, a fully covered image) counts as that modality missing."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from fusion.fusions.blank_inputs import absent_if_blank, blank_rows
from tests.helpers.recipes import compose_recipe


def test_blank_rows_are_the_constant_ones():
    audio = torch.randn(4, 100)
    audio[1] = 0.0
    audio[3] = 0.25
    assert blank_rows(audio).tolist() == [False, True, False, True]
    assert blank_rows({"input_ids": torch.zeros(4, 3, dtype=torch.long)}) is None


def test_a_row_never_loses_every_modality():
    batch = {"audio": torch.zeros(3, 50), "image": torch.randn(3, 1, 4, 4)}
    batch["image"][2] = 0.5  # row 2: both blank
    mask = {"audio": torch.tensor([True, True, True]), "image": torch.tensor([True, False, True])}
    # row 1 has only a blank clip; row 2 only blank inputs: both keep what they had
    out = absent_if_blank(mask, batch, ["audio", "image"])
    assert out["audio"].tolist() == [False, True, True] and out["image"].tolist() == [True, False, True]


@pytest.mark.parametrize("recipe", ["early", "late", "progressive"])
def test_a_silent_clip_gives_the_answer_of_the_clip_removed(recipe, tiny_digits):
    """Oracle: the same batch with the audio's mask off. Without the option the silent clip changes the answer."""
    cfg = compose_recipe(recipe, [f"data.manifest={tiny_digits}"])
    data = instantiate(cfg.data)
    data.prepare()
    task = instantiate(cfg.model, data_spec=data.spec, _recursive_=False, _convert_="all").eval()
    assert task.model.blank_as_absent  # the recipes' default
    batch = next(iter(data.test_dataloader()))
    silent = {**batch, "audio": torch.zeros_like(batch["audio"])}
    removed = {**batch, "mask": {**batch["mask"], "audio": torch.zeros_like(batch["mask"]["audio"])}}
    with torch.no_grad():
        expected = task.model(removed)
        torch.testing.assert_close(task.model(silent), expected)
        task.model.blank_as_absent = False
        assert not torch.allclose(task.model(silent), expected)
