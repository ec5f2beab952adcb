"""The gate's promise on tiny generated data: a fusion model that loses its strong modality does as well as a
model trained on the weak modality alone, for every fusion kind trained with the default modality dropout and
corruption; and losing the weak modality costs nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.tasks.classify import ClassificationTask
from tests.helpers.recipes import compose_recipe


class FlatEncoder(nn.Module):
    """(B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int = 16):
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU())

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return self.net(value)


def _data(rows: int, generator: torch.Generator) -> dict:
    """image (B, 12) alone decides the label (clear class means); audio (B, 10) is a noisier hint."""
    label = torch.randint(0, 4, (rows,), generator=generator)
    centres = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))  # (K, 12), fixed
    image = 2 * centres[label] + 0.5 * torch.randn(rows, 12, generator=generator)
    audio = centres[label, :10].flip(1) + 1.2 * torch.randn(rows, 10, generator=generator)
    return {"image": image, "audio": audio, "label": label,
            "mask": {"image": torch.ones(rows, dtype=torch.bool), "audio": torch.ones(rows, dtype=torch.bool)}}


def _train(fusion: str, modalities: list[str]) -> nn.Module:
    cfg = compose_recipe(fusion, [])
    torch.manual_seed(0)
    encoders = {"image": {"_target_": f"{__name__}.FlatEncoder", "in_dim": 12},
                "audio": {"_target_": f"{__name__}.FlatEncoder", "in_dim": 10}}
    options = {k: v for k, v in cfg.model.items() if k not in ("_target_", "encoders", "fusion")}
    task = ClassificationTask({"modalities": modalities, "num_classes": 4, "classes": list("abcd")},
                              {m: encoders[m] for m in modalities}, dict(cfg.model.fusion), **options)
    task.log = task.log_dict = lambda *args, **kwargs: None
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
    task.train()
    for _ in range(120):
        batch = _data(64, generator)
        batch = {**batch, "mask": {m: batch["mask"][m] for m in modalities}}
        loss = task._step(batch, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return task.model.eval()


def _accuracy(model: nn.Module, batch: dict, removed: str | None = None) -> float:
    if removed is not None:
        batch = {**batch, removed: torch.zeros_like(batch[removed]),
                 "mask": {**batch["mask"], removed: torch.zeros_like(batch["mask"][removed])}}
    with torch.no_grad():
        return (model(batch).argmax(1) == batch["label"]).float().mean().item()


@pytest.mark.parametrize("fusion", ["early", "late", "progressive"])
def test_a_missing_modality_costs_no_more_than_losing_it(fusion):
    test = _data(1000, torch.Generator().manual_seed(2))
    fused, audio_only = _train(fusion, ["audio", "image"]), _train(fusion, ["audio"])
    both = _accuracy(fused, test)
    assert both > 0.95
    assert _accuracy(fused, test, removed="audio") >= both - 0.01  # the weak hint lost: nothing changes
    alone = _accuracy(audio_only, {**test, "mask": {"audio": test["mask"]["audio"]}})
    assert 0.5 < alone < 0.95  # the hint is informative but weak
    assert _accuracy(fused, test, removed="image") >= alone - 0.03, alone
