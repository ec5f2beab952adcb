"""Pretrained towers loaded the way a user names them (tiny random models saved locally, no download): names,
preprocessing taken from the tower, masks, freezing, learning-rate groups, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import functional as TF

from fusion.data.datamodule import ManifestDataModule
from fusion.encoders.finetune import pretrained_lr_scales, scaled_groups
from fusion.encoders.pretrained import PretrainedEncoder
from fusion.encoders.towers import TowerName, encoder_config, encoder_preprocessing, parse_tower
from fusion.errors import ConfigError, MissingFileError
from tests.encoders.conftest import MEAN, STD
from tests.helpers.recipes import compose_recipe


def datamodule(tiny_digits, modalities, **towers) -> ManifestDataModule:
    dm = ManifestDataModule(str(tiny_digits), modalities=modalities, batch_size=4, augment=False, towers=towers,
                            on_error="skip")  # single-modality views of the tiny set have empty rows
    dm.prepare()
    return dm


def test_tower_names():
    assert parse_tower("hf:google/vit-base-patch16-224") == TowerName("hf", "google/vit-base-patch16-224")
    assert parse_tower("tv:resnet50:IMAGENET1K_V2").weights == "IMAGENET1K_V2"
    assert parse_tower("tv:resnet18:/w/r.pth").weights_file == "/w/r.pth"
    assert parse_tower("timm:convnext_tiny:none").random_init
    for bad in ("resnet18", "keras:resnet", "hf:"):
        with pytest.raises(ConfigError, match="tower name"):
            parse_tower(bad)


def test_command_line_tower_override_composes_to_a_pretrained_encoder():
    cfg = compose_recipe("late", ["model.encoders.image=tv:resnet18", "model.encoders.audio=hf:facebook/wav2vec2-base"])
    assert cfg.model.encoders.image == "tv:resnet18"
    assert cfg.data.image_size is None and cfg.data.image_channels is None and cfg.data.sample_rate is None
    assert encoder_config("image", cfg.model.encoders.image)["_target_"] == "fusion.encoders.pretrained.PretrainedEncoder"
    # torchvision's weights metadata, without downloading the weights
    prep = encoder_preprocessing("image", "tv:resnet18")
    assert (prep.crop, prep.resize, prep.channels, prep.mean) == (224, 256, 3, (0.485, 0.456, 0.406))
    builtin = compose_recipe("late")
    assert (builtin.data.image_size, builtin.data.image_channels, builtin.data.sample_rate) == (32, 1, 8000)
    preset = compose_recipe("clip", ["model/encoders=pretrained", "model.encoders.image.tower=tv:resnet50",
                                     "model.encoders.image.freeze=true"])
    assert preset.model.encoders.image.freeze and preset.model.encoders.image.tower == "tv:resnet50"


def test_offline_missing_tower_names_what_is_missing(tmp_path):
    with pytest.raises(MissingFileError, match="hf:no-such-org/no-such-model"):
        encoder_preprocessing("image", "hf:no-such-org/no-such-model")
    with pytest.raises(MissingFileError, match=str(tmp_path / "absent")):
        PretrainedEncoder("text", f"hf:{tmp_path / 'absent'}")
    with pytest.raises(MissingFileError, match="torch hub cache"):
        PretrainedEncoder("image", "tv:resnet18")  # DEFAULT weights are not cached here and HF_HUB_OFFLINE=1


def test_vit_processor_size_and_normalisation_are_applied(tiny_digits, tiny_vit):
    dm = datamodule(tiny_digits, ["image"], image=f"hf:{tiny_vit}")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 24, 24)
    raw = dm.datasets["test"].decode(0, "image")  # PIL, RGB because the tower takes 3 channels
    assert raw.mode == "RGB"
    expected = TF.normalize(TF.to_tensor(TF.resize(raw, [24, 24])), MEAN, STD)
    torch.testing.assert_close(batch["image"][0], expected)
    encoder = PretrainedEncoder("image", f"hf:{tiny_vit}").eval()
    assert encoder(batch["image"]).shape == (4, 32)
    assert encoder.forward_tokens(batch["image"]).shape == (4, 10, 32)  # 9 patches + CLS


def test_torchvision_state_dict_file_loads_with_weights_transforms(tiny_digits, resnet18_file):
    tower = f"tv:resnet18:{resnet18_file}"
    encoder = PretrainedEncoder("image", tower, out_dim=16)
    saved = torch.load(resnet18_file, weights_only=True)
    torch.testing.assert_close(encoder.backbone.model.conv1.weight, saved["conv1.weight"])
    assert [type(b).__name__ for b in encoder.blocks] == ["Sequential"] * 4  # layer1..layer4
    dm = datamodule(tiny_digits, ["image"], image=tower)
    assert dm.image_prep.resize == 256 and dm.image_prep.crop == 224
    assert next(iter(dm.test_dataloader()))["image"].shape == (4, 3, 224, 224)
    small = ManifestDataModule(str(tiny_digits), modalities=["image"], image_size=64, towers={"image": tower},
                               on_error="skip")
    small.prepare()
    assert (small.image_prep.crop, small.image_prep.resize) == (64, 73)  # same resize/crop ratio at 64 px


def test_timm_weights_file(timm_file):
    encoder = PretrainedEncoder("image", f"timm:test_vit:{timm_file}", freeze=True)
    prep = PretrainedEncoder.preprocessing("image", "timm:test_vit", image_size=32)
    assert prep.crop == 32 and prep.channels == 3
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, encoder.out_dim)


def test_wav2vec2_sample_rate_features_and_mask(tiny_digits, tiny_wav2vec2):
    dm = datamodule(tiny_digits, ["audio"], audio=f"hf:{tiny_wav2vec2}")
    assert dm.sample_rate == 16000 and dm.audio_prep.variable_length
    wave = dm.datasets["test"].decode(0, "audio")
    assert wave.numel() <= 16000  # resampled from the 8 kHz files, cropped to data.audio_seconds at most
    batch = next(iter(dm.test_dataloader()))
    values, mask = batch["audio"]["input_values"], batch["audio"]["attention_mask"]
    assert values.shape == mask.shape and values.shape[1] == max(
        dm.datasets["test"].decode(i, "audio").numel() for i in range(4))
    first = int(mask[0].sum())
    normalised = values[0, :first]
    assert abs(float(normalised.mean())) < 1e-3 and abs(float(normalised.std()) - 1) < 1e-2  # do_normalize


def test_audio_and_text_masks_reach_the_towers(tiny_wav2vec2, tiny_bert):
    from fusion.data.dataset import AudioBatcher
    from fusion.data.tokenizer import build_tokenizer

    torch.manual_seed(0)
    audio = PretrainedEncoder("audio", f"hf:{tiny_wav2vec2}").eval()
    batcher = AudioBatcher(16000, str(tiny_wav2vec2), options={"local_files_only": True})
    short, long = torch.randn(4000), torch.randn(9000)
    with torch.no_grad():
        alone = audio(batcher([short]))
        padded = audio(batcher([short, long]))[:1]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)

    text = PretrainedEncoder("text", f"hf:{tiny_bert}").eval()
    tokenizer = build_tokenizer(str(tiny_bert), local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(text(tokenizer(["the digit seven"], 8)), text(tokenizer(["the digit seven"], 20)))


def test_text_tokenizer_comes_from_the_tower(tiny_digits, tiny_bert):
    from transformers import AutoTokenizer

    dm = datamodule(tiny_digits, ["text"], text=f"hf:{tiny_bert}")
    batch = next(iter(dm.test_dataloader()))
    reference = AutoTokenizer.from_pretrained(str(tiny_bert))
    row = dm.datasets["test"].rows[0]
    expected = reference(row.media["text"], padding="max_length", truncation=True, max_length=dm.max_text_length)
    assert batch["text"]["input_ids"][0].tolist() == expected["input_ids"]


def test_explicit_data_settings_must_agree_with_the_tower(tiny_digits, tiny_wav2vec2, tiny_vit):
    with pytest.raises(ConfigError, match="data.sample_rate=8000"):
        ManifestDataModule(str(tiny_digits), modalities=["audio"], sample_rate=8000,
                           towers={"audio": f"hf:{tiny_wav2vec2}"}).prepare()
    with pytest.raises(ConfigError, match="data.image_channels=1"):
        ManifestDataModule(str(tiny_digits), modalities=["image"], image_channels=1,
                           towers={"image": f"hf:{tiny_vit}"}).prepare()


@pytest.mark.parametrize("unfreeze_last", [0, 1])
def test_freezing_leaves_weights_and_statistics_unchanged(resnet18_file, unfreeze_last):
    torch.manual_seed(0)
    encoder = PretrainedEncoder("image", f"tv:resnet18:{resnet18_file}", out_dim=8, freeze=True,
                                unfreeze_last=unfreeze_last).train()
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        encoder(torch.randn(4, 3, 32, 32)).square().mean().backward()
        optimizer.step()
    after = encoder.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if unfreeze_last == 0:
        assert not changed
    else:
        assert changed and all(k.startswith("model.layer4.") for k in changed)  # the last block (and its BN stats)


def test_lower_and_layer_wise_learning_rates(tiny_bert):
    encoder = PretrainedEncoder("text", f"hf:{tiny_bert}", out_dim=8, lr_scale=0.1, layer_decay=0.5)
    model = torch.nn.ModuleDict({"text": encoder})
    scales = pretrained_lr_scales(model)
    assert scales["text.backbone.model.encoder.layer.1.output.dense.weight"] == pytest.approx(0.1)
    assert scales["text.backbone.model.encoder.layer.0.output.dense.weight"] == pytest.approx(0.05)
    assert scales["text.backbone.model.embeddings.word_embeddings.weight"] == pytest.approx(0.025)
    assert "text.proj.weight" not in scales  # the new projection learns at the task's lr
    groups = scaled_groups(model.named_parameters(), scales, lr=1e-3)
    assert sorted(round(g["lr"], 7) for g in groups) == [2.5e-5, 5e-5, 1e-4, 1e-3]


@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_gradient_checkpointing_gives_the_same_gradients(tower, tiny_vit, resnet18_file):
    name = f"hf:{tiny_vit}" if tower == "vit" else f"tv:resnet18:{resnet18_file}"
    images = torch.randn(2, 3, 24, 24)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = PretrainedEncoder("image", name, gradient_checkpointing=checkpointing).train()
        encoder.backbone.model.eval()  # dropout / BN statistics aside, the two passes must agree
        encoder(images).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])
