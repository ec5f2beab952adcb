"""The sync-free training step: the loss equals the boolean-indexed reference, eager steps equal a plain loop,
and (on CUDA) the whole step replayed as a CUDA graph trains the same weights as the eager step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusion.errors import ConfigError
from fusion.fusions.early import EarlyFusion
from fusion.fusions.gating import host_checks_allowed, presence
from fusion.fusions.model import FusionModel
from fusion.fusions.progressive import ProgressiveFusion
from fusion.tasks.classify import classification_loss
from fusion.tasks.train_step import TrainStep, make_adamw

K, B = 5, 12


class Flat(nn.Module):
    """(B, C, H, W) or (B, L) -> (B, out_dim)."""

    def __init__(self, inputs: int, out_dim: int = 16):
        super().__init__()
        self.net, self.out_dim = nn.Linear(inputs, out_dim), out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def tiny_model(fusion_cls=ProgressiveFusion, modality_dropout: float = 0.0) -> FusionModel:
    torch.manual_seed(0)
    fusion = fusion_cls({"audio": 16, "image": 16}, K, hidden_dim=16, dropout=0.0)
    return FusionModel({"audio": Flat(40), "image": Flat(64)}, fusion, modality_dropout)


def tiny_batch(seed: int = 0, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    image_mask = torch.rand(B, generator=g) > 0.3
    batch = {"image": torch.randn(B, 1, 8, 8, generator=g), "audio": torch.randn(B, 40, generator=g),
             "mask": {"image": image_mask, "audio": ~image_mask | (torch.rand(B, generator=g) > 0.5)},
             "label": torch.randint(0, K, (B,), generator=g)}
    return {k: ({m: t.to(device) for m, t in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}


def reference_loss(result, labels, mask, smoothing, weight):
    """The former formula: boolean indexing, modalities without any present row left out."""
    terms = [F.cross_entropy(logits[mask[m]], labels[mask[m]], label_smoothing=smoothing)
             for m, logits in result.unimodal_logits.items() if bool(mask[m].any())]
    total = F.cross_entropy(result.logits, labels, label_smoothing=smoothing) + result.aux_loss
    return total + weight * torch.stack(terms).mean()


@pytest.mark.parametrize("fusion_cls", [EarlyFusion, ProgressiveFusion])
def test_loss_equals_the_boolean_indexed_reference(fusion_cls):
    model = tiny_model(fusion_cls)
    batch = tiny_batch()
    batch["mask"]["image"][:] = False  # a modality with no present row contributes no term at all
    batch["mask"]["audio"][:] = True
    result = model.forward_with_details(batch)
    total, loss = classification_loss(result, batch["label"], result.mask, 0.1, 0.5)
    torch.testing.assert_close(total, reference_loss(result, batch["label"], result.mask, 0.1, 0.5))
    torch.testing.assert_close(loss, F.cross_entropy(result.logits, batch["label"], label_smoothing=0.1))


def test_eager_steps_equal_a_plain_loop():
    model, plain = tiny_model(), tiny_model()
    step = TrainStep(model, make_adamw(model.parameters(), 1e-2, 1e-4, "cpu"),
                     lambda r, b: classification_loss(r, b["label"], r.mask, 0.1, 0.5))
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=1e-4)
    for seed in range(3):
        batch = tiny_batch(seed)
        step.step(batch)
        optimizer.zero_grad()
        result = plain.forward_with_details(batch)
        reference_loss(result, batch["label"], result.mask, 0.1, 0.5).backward()
        optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    stats = step.take_stats()
    assert stats["samples"] == 3 * B and 0 <= stats["acc"] <= 1 and stats["loss"] > 0
    assert step.take_stats()["samples"] == 0  # starts over


def test_graph_mode_needs_cuda_and_a_known_mode():
    model = tiny_model()
    optimizer = make_adamw(model.parameters(), 1e-3, 0.0, "cpu")
    for mode in ("graph", "compile_graph"):
        with pytest.raises(ConfigError, match=f"mode '{mode}' needs a CUDA device"):
            TrainStep(model, optimizer, lambda r, b: (r.logits.sum(), r.logits.sum()), mode=mode)
    with pytest.raises(ConfigError, match="train_step mode must be one of"):
        TrainStep(model, optimizer, lambda r, b: (r.logits.sum(), r.logits.sum()), mode="fast")


def test_presence_checks_eagerly_and_not_while_compiling():
    mask = {"a": torch.tensor([True, False]), "b": torch.tensor([False, False])}
    assert host_checks_allowed()
    with pytest.raises(ValueError, match="at least one present modality"):
        presence(mask, ["a", "b"])
    assert presence(mask, ["a", "b"], check=False).tolist() == [[True, False], [False, False]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize(("mode", "reference"), [("graph", "eager"), ("compile_graph", "compile")])
def test_graph_step_trains_like_the_eager_step(mode, reference):
    """The replayed graph trains exactly as the same step run eagerly (compile_graph: the same compiled forward
    without the graph; Inductor's fused kernels round differently from the eager ones)."""
    torch.backends.cudnn.deterministic = True
    eager_model, graph_model = tiny_model().cuda(), tiny_model().cuda()
    loss_fn = lambda r, b: classification_loss(r, b["label"], r.mask, 0.1, 0.5)  # noqa: E731
    eager = TrainStep(eager_model, make_adamw(eager_model.parameters(), 1e-2, 1e-4, "cuda"), loss_fn, mode=reference)
    graph = TrainStep(graph_model, make_adamw(graph_model.parameters(), 1e-2, 1e-4, "cuda"), loss_fn, mode=mode,
                      warmup=2)
    for seed in range(6):  # 2 warm-up steps, the capture (and its first replay), 3 replays
        batch = tiny_batch(seed, "cuda")
        eager.step(batch)
        graph.step(batch)
    assert graph.graph is not None
    for (name, a), b in zip(graph_model.state_dict().items(), eager_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(graph.take_stats()["loss"], eager.take_stats()["loss"], atol=1e-5, rtol=1e-5)


def test_recipe_option_trains_with_the_sync_free_step(tiny_digits, tmp_path):
    """`model.train_step=eager`: Lightning runs the sync-free step (manual optimisation, fused/foreach AdamW);
    the step counter, the schedule and the epoch's training loss and accuracy are kept."""
    import json

    from fusion.training import train
    from tests.helpers.recipes import compose_recipe, tiny_overrides

    cfg = compose_recipe("late", tiny_overrides(tiny_digits, tmp_path / "run", "trainer.max_epochs=2",
                                                "model.train_step=eager", "logger=csv"))
    metrics = train(cfg)
    assert 0 <= metrics["test/acc"] <= 1
    logged = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    epochs = [dict(zip(header, line.split(","), strict=False)) for line in logged[1:]]
    losses = [float(row["train/loss"]) for row in epochs if row.get("train/loss")]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    steps = [int(row["step"]) for row in epochs if row.get("train/loss")]
    assert steps[-1] == 2 * 3 - 1  # 48 rows at batch 16: 3 optimizer steps per epoch, counted by Lightning
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]


def test_recipe_option_is_checked():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from tests.helpers.recipes import compose_recipe

    cfg = compose_recipe("late", ["model.train_step=fast"])
    spec = {"modalities": ["audio", "image"], "num_classes": 3, "classes": ["a", "b", "c"]}
    with pytest.raises(InstantiationException, match="model.train_step must be 'lightning' or one of"):
        instantiate(cfg.model, data_spec=spec, _recursive_=False, _convert_="all")
