"""Every recipe trains a few steps with pretrained towers named on the command line, resumes, reloads from its
run folder, and a clip run seeds a fusion model through init_from."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fusion.eval.run_folder import load_run
from fusion.runtime.checkpoints import load_checkpoint_file
from fusion.training import train
from tests.helpers.recipes import compose_recipe, tiny_overrides

FEW_BATCHES = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


def towers(recipe: str, tiny_vit, tiny_wav2vec2, tiny_bert, resnet18_file, timm_file) -> list[str]:
    image = {"early": f"hf:{tiny_vit}", "late": f"tv:resnet18:{resnet18_file}", "clip": f"hf:{tiny_vit}",
             "progressive": f"timm:test_vit:{timm_file}" if timm_file else f"hf:{tiny_vit}"}[recipe]
    audio = "" if recipe == "late" else f"model.encoders.audio=hf:{tiny_wav2vec2}"  # late keeps the built-in audio
    size = [] if image.startswith("hf:") else ["data.image_size=32"]  # the CNN / timm towers at 32 px, fast
    return [f"model.encoders.image={image}", f"model.encoders.text=hf:{tiny_bert}", *([audio] if audio else []),
            *size, "data.on_error=skip", "trainer.max_epochs=1", *FEW_BATCHES]


@pytest.fixture
def timm_or_none(request):
    return request.getfixturevalue("timm_file") if importlib.util.find_spec("timm") else None


@pytest.mark.parametrize("recipe", ["early", "late", "progressive", "clip"])
def test_recipe_trains_resumes_and_reloads_with_pretrained_towers(recipe, tiny_digits, tmp_path, tiny_vit,
                                                                  tiny_wav2vec2, tiny_bert, resnet18_file,
                                                                  timm_or_none):
    named = towers(recipe, tiny_vit, tiny_wav2vec2, tiny_bert, resnet18_file, timm_or_none)
    run = tmp_path / "run"
    metrics = train(compose_recipe(recipe, tiny_overrides(tiny_digits, run, *named)))
    assert all(value == value for value in metrics.values())  # no NaN
    first = load_checkpoint_file(run / "last.ckpt")
    assert first["global_step"] == 2

    resumed = tmp_path / "resumed"
    train(compose_recipe(recipe, tiny_overrides(tiny_digits, resumed, *named, "trainer.max_epochs=2",
                                                f"ckpt_path={run / 'last.ckpt'}")))
    assert load_checkpoint_file(resumed / "last.ckpt")["global_step"] == 4

    loaded = load_run(resumed)  # rebuilt from the checkpoint's hyper-parameters (the tower names)
    state = load_checkpoint_file(loaded.checkpoint)["state_dict"]
    for name, value in loaded.task.state_dict().items():
        torch.testing.assert_close(value, state[name])


def test_clip_towers_seed_a_fusion_model_through_init_from(tiny_digits, tmp_path, tiny_vit, tiny_wav2vec2,
                                                           tiny_bert, resnet18_file):
    named = towers("clip", tiny_vit, tiny_wav2vec2, tiny_bert, resnet18_file, None)
    clip = tmp_path / "clip"
    train(compose_recipe("clip", tiny_overrides(tiny_digits, clip, *named)))
    seeded = tmp_path / "seeded"
    train(compose_recipe("early", tiny_overrides(tiny_digits, seeded, *named, f"init_from={clip / 'best.ckpt'}",
                                                 "+trainer.max_steps=1")))
    aligned = load_checkpoint_file(clip / "best.ckpt")["state_dict"]
    fused = load_checkpoint_file(seeded / "last.ckpt")["state_dict"]
    key = "model.encoders.text.backbone.model.embeddings.word_embeddings.weight"
    from safetensors.torch import load_file

    original = load_file(str(tiny_bert / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert not torch.equal(aligned[key], original)  # the clip run moved the tower
    # the fusion run starts from the clip run's tower, not from the folder's weights (one small step since)
    assert (fused[key] - aligned[key]).abs().max() < (fused[key] - original).abs().max()
