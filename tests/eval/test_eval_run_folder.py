"""Loading run folders, real fusion models under modality removal, and the evaluate.py sweep end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from PIL import Image

from fusion.eval.robustness import evaluate_robustness, remove_modality
from fusion.eval.run_folder import load_run
from fusion.eval.sweep import EvalSettings, run_sweep
from fusion.runtime.checkpoints import CheckpointError, resolve_checkpoint
from fusion.tasks.classify import ClassificationTask
from tests.helpers.recipes import RECIPES

TASK_TARGET = "fusion.tasks.classify.ClassificationTask"
ENCODERS = {
    "image": {"_target_": "fusion.encoders.image.ImageEncoder", "backbone": "cnn", "in_channels": 1, "out_dim": 16,
              "width": 4},
    "audio": {"_target_": "fusion.encoders.audio.AudioEncoder", "sample_rate": 8000, "n_mels": 16, "out_dim": 16,
              "width": 4},
    "text": {"_target_": "fusion.encoders.text.TextEncoder", "vocab_size": 259, "out_dim": 16, "num_layers": 1,
             "num_heads": 2, "max_length": 40},
}
DATA = {"_target_": "fusion.data.datamodule.ManifestDataModule", "batch_size": 4, "image_size": 32,
        "sample_rate": 8000, "audio_seconds": 0.25, "max_text_length": 16, "augment": False, "cache": True}


def fusion_config(kind: str) -> dict:
    """The recipe's fusion config (recipes/model/fusion/<kind>.yaml), shrunk."""
    config = yaml.safe_load((RECIPES / "model" / "fusion" / f"{kind}.yaml").read_text())
    return {**config, "hidden_dim": 16}


def make_run(tmp_path: Path, kind: str, data_spec: dict, data: dict | None = None) -> tuple[Path, ClassificationTask]:
    """A run folder as train() writes it: config.yaml and a Lightning-format best.ckpt."""
    torch.manual_seed(0)
    modalities = data_spec["modalities"]
    task = ClassificationTask(data_spec, {m: ENCODERS[m] for m in modalities}, fusion_config(kind)).eval()
    run_dir = tmp_path / kind / "20260101-000000"
    run_dir.mkdir(parents=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "epoch": 0},
               run_dir / "best.ckpt")
    config = {"recipe_name": kind, "data": data or DATA,
              "model": {"_target_": TASK_TARGET, "encoders": ENCODERS, "fusion": fusion_config(kind)}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir, task


def synthetic_batch(batch_size: int = 6) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(batch_size, 1, 32, 32, generator=generator),
        "audio": torch.randn(batch_size, 2000, generator=generator),
        "text": {"input_ids": torch.randint(3, 259, (batch_size, 12), generator=generator),
                 "attention_mask": torch.ones(batch_size, 12, dtype=torch.long)},
        "mask": {"audio": torch.tensor([True, True, False, True, True, True]),
                 "image": torch.tensor([True, False, True, True, True, True]),
                 "text": torch.tensor([True, True, True, False, False, True])},
        "label": torch.arange(batch_size) % 3,
    }


SPEC = {"modalities": ["audio", "image", "text"], "num_classes": 3, "classes": ["a", "b", "c"]}


@pytest.mark.parametrize("kind", ["early", "late", "progressive"])
def test_loaded_run_reproduces_the_trained_model(tmp_path, kind):
    run_dir, task = make_run(tmp_path, kind, SPEC)
    run = load_run(run_dir)
    assert run.fusion == kind and run.name == kind and run.checkpoint == run_dir / "best.ckpt"
    assert run.epochs_trained == 1  # the checkpoint was written at the end of epoch index 0
    assert resolve_checkpoint(run_dir / "best.ckpt") == (run_dir, run_dir / "best.ckpt")
    batch = synthetic_batch()
    with torch.no_grad():
        torch.testing.assert_close(run.model(batch), task.model(batch), rtol=0, atol=0)


def test_a_run_with_an_option_that_left_the_product_still_loads(tmp_path):
    run_dir, task = make_run(tmp_path, "late", SPEC)
    checkpoint = torch.load(run_dir / "best.ckpt", weights_only=True)
    checkpoint["hyper_parameters"] |= {"gate_calibration_epochs": 0, "gate_calibration_lr": 0.003}
    torch.save(checkpoint, run_dir / "best.ckpt")
    run = load_run(run_dir)
    batch = synthetic_batch()
    with torch.no_grad():
        assert torch.equal(run.model(batch), task(batch))


@pytest.mark.parametrize("kind", ["early", "late", "progressive"])
def test_removing_a_modality_equals_masking_it_in_every_fusion(tmp_path, kind):
    _, task = make_run(tmp_path, kind, SPEC)
    model, batch = task.model, synthetic_batch()
    batches = [batch]
    result = evaluate_robustness(model, batches, "cpu", num_classes=3, levels=(0.0, 1.0))
    for modality in SPEC["modalities"]:
        masked = {**batch, "mask": {**batch["mask"], modality: torch.zeros(6, dtype=torch.bool)}}
        with torch.no_grad():
            masked_logits = model(masked)
            torch.testing.assert_close(model(remove_modality(batch, modality)), masked_logits)
        expected = (masked_logits.argmax(-1) == batch["label"]).float().mean().item()
        assert result["removed"][modality] == pytest.approx(expected)
        rest = "+".join(m for m in sorted(SPEC["modalities"]) if m != modality)
        assert result["subsets"][rest] == {"acc": pytest.approx(expected), "samples": 6}


def test_samples_left_without_any_modality_are_left_out_of_removal_accuracy(tmp_path):
    _, task = make_run(tmp_path, "late", SPEC)
    batch = synthetic_batch()
    batch["mask"] = {"image": torch.ones(6, dtype=torch.bool),
                     "text": torch.tensor([False, True, True, True, True, True]),
                     "audio": torch.tensor([False, True, True, True, True, True])}  # sample 0: only image
    result = evaluate_robustness(task.model, [batch], "cpu", num_classes=3, levels=(0.0, 1.0))
    assert {name: value["samples"] for name, value in result["subsets"].items()} == {
        "audio+image+text": 6, "audio+image": 6, "audio+text": 5, "image+text": 6, "audio": 5, "image": 6, "text": 5}
    keep = torch.tensor([False, True, True, True, True, True])
    masked = {key: value[keep] for key, value in batch.items() if key not in ("mask", "text")}
    masked["text"] = {key: value[keep] for key, value in batch["text"].items()}
    masked["mask"] = {m: value[keep] for m, value in batch["mask"].items()} | {"image": torch.zeros(5, dtype=torch.bool)}
    with torch.no_grad():
        expected = (task.model(masked).argmax(-1) == masked["label"]).float().mean().item()
    assert result["removed"]["image"] == pytest.approx(expected)


def test_missing_checkpoint_and_config_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="best.ckpt"):
        load_run(tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_run(tmp_path)


def write_tiny_manifest(root: Path) -> Path:
    """12 rows, classes a/b/c, image + audio + text, fixed train/test split."""
    rng = np.random.default_rng(0)
    lines = ["split,label,image,audio,text"]
    for i in range(12):
        label = "abc"[i % 3]
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / f"{i}.png")
        tone = np.sin(2 * math.pi * (200 + 100 * (i % 3)) * np.arange(2000) / 8000).astype(np.float32)
        soundfile.write(root / f"{i}.wav", 0.5 * tone, 8000)
        lines.append(f"{'test' if i >= 6 else 'train'},{label},{i}.png,{i}.wav,class {label}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_sweep_over_run_folders_writes_one_report_and_cached_batches_match(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    data = {**DATA, "manifest": str(write_tiny_manifest(media))}
    runs = [str(make_run(tmp_path / "runs", kind, SPEC, data)[0]) for kind in ("early", "late")]
    settings = EvalSettings(run=runs, out_dir=str(tmp_path / "report"), devices=["cpu"], variants=["fp32"],
                            threads=1, warmup=1, iters=5, batch_sizes=[4], noise_levels=[0.0, 1.0],
                            cache_batches=True)
    report, paths = run_sweep(settings, log=lambda message: None)
    parsed = json.loads(paths["json"].read_text())
    assert [(r["model"], r["variant"]) for r in parsed["rows"]] == [("early", "fp32"), ("late", "fp32")]
    assert all(r["num_test_samples"] == 6 for r in parsed["rows"])
    assert parsed["robustness"]["late"]["corruption"]["audio"]["noise"]["effective_robustness"] == 0.0
    assert "effective_robustness" in parsed["robustness"]["early"]["corruption"]["image"]["occlusion"]
    assert paths["png"].stat().st_size > 0 and "| early | early | 1 | fp32 | cpu |" in paths["md"].read_text()
    stored = torch.load(Path(runs[0]) / "test_batches.pt", weights_only=True)["batches"][0]
    assert stored["audio"]["__pcm16__"].dtype == torch.int16  # 16-bit WAV samples kept losslessly as int16
    cached, _ = run_sweep(EvalSettings(run=runs[:1], out_dir=str(tmp_path / "cached"), devices=["cpu"],
                                       variants=["fp32"], threads=1, warmup=1, iters=3, batch_sizes=[4],
                                       robustness=False, from_cache=True), log=lambda message: None)
    assert cached["rows"][0]["acc"] == report["rows"][0]["acc"]
    assert cached["rows"][0]["macro_f1"] == report["rows"][0]["macro_f1"]


def test_evaluate_config_takes_runs_and_data_overrides():
    from fusion.commands.app import compose_config
    from fusion.commands.evaluate import run_folders

    cfg = compose_config("evaluate", ["run=[a,b]", "data.manifest=m.csv", "data.modalities=[image,audio]",
                                      "device=[cpu]", "batch_sizes=[8,64]", "robustness=false", "threads=2"])
    assert run_folders(cfg.run) == ["a", "b"] and run_folders("c") == ["c"]
    assert cfg.data.manifest == "m.csv" and list(cfg.data.modalities) == ["image", "audio"]
    assert list(cfg.device) == ["cpu"] and list(cfg.batch_sizes) == [8, 64]
    assert cfg.robustness is False and cfg.threads == 2
