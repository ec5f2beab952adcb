"""Held-out gate calibration moves only the gates, and towards the modality that is reliable on held-out data."""

from __future__ import annotations

import torch
from torch import nn

from fusion.fusions.late import LateFusion
from fusion.fusions.model import FusionModel
from fusion.tasks.gate_calibration import calibrate_gates, gate_parameters


class Passthrough(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def batches(n_batches: int, informative: str, seed: int) -> list[dict]:
    """Each modality's features encode the label; on these batches only `informative` does, the other lies."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        label = torch.randint(0, 4, (32,), generator=g)
        lie = (label + torch.randint(1, 4, (32,), generator=g)) % 4
        feats = {}
        for m in ("a", "b"):
            target = label if m == informative else lie
            feats[m] = 3 * nn.functional.one_hot(target, 4).float() + 0.3 * torch.randn(32, 4, generator=g)
        out.append({**feats, "label": label, "mask": {m: torch.ones(32, dtype=torch.bool) for m in ("a", "b")}})
    return out


def test_calibration_moves_only_gates_and_prefers_the_reliable_modality():
    torch.manual_seed(0)
    model = FusionModel({"a": Passthrough(4), "b": Passthrough(4)}, LateFusion({"a": 4, "b": 4}, 4, hidden_dim=16))
    # heads that read their modality correctly: train everything where both modalities tell the truth
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for batch in batches(60, informative="a", seed=1) + batches(60, informative="b", seed=2):
        for m in ("a", "b"):
            batch[m] = 3 * nn.functional.one_hot(batch["label"], 4).float()
        loss = nn.functional.cross_entropy(model(batch), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    held_out = batches(10, informative="a", seed=3)
    weight_a = lambda: torch.cat([model.forward_with_details(b).gate_weights["decision/a"] for b in held_out]).mean().item()  # noqa: E731
    start = weight_a()
    losses = calibrate_gates(model, held_out, epochs=15, lr=1e-2)
    assert losses[-1] < losses[0]
    assert weight_a() > max(0.8, start + 0.2)
    gate_names = {n for n, p in model.named_parameters() if any(p is q for q in gate_parameters(model))}
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in gate_names), name
    assert model.training  # mode restored
