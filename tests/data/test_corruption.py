import pytest
import torch

from fusion.data.corruption import CorruptionAugment, corrupt
from fusion.errors import ConfigError


def _batch(rows: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 900, (rows, 12), generator=g)
    attention = torch.ones(rows, 12, dtype=torch.long)
    attention[:, 9:] = 0
    return {"image": torch.rand(rows, 1, 20, 20, generator=g), "audio": torch.randn(rows, 800, generator=g),
            "text": {"input_ids": ids, "attention_mask": attention},
            "mask": {m: torch.ones(rows, dtype=torch.bool) for m in ("audio", "image", "text")},
            "label": torch.zeros(rows, dtype=torch.long)}


def test_noise_sets_the_noise_to_signal_ratio_per_sample():
    batch = _batch()
    level = torch.linspace(0, 1, 64)
    noisy = corrupt(batch, "audio", "noise", level, torch.Generator().manual_seed(1))
    ratio = (noisy["audio"] - batch["audio"]).std(dim=1) / batch["audio"].std(dim=1)  # (B,)
    torch.testing.assert_close(ratio, level, atol=0.06, rtol=0.06)
    assert noisy["image"] is batch["image"]  # other modalities untouched


def test_image_occlusion_covers_the_level_with_one_grey_box():
    batch = _batch()
    occluded = corrupt(batch, "image", "occlusion", 0.25, torch.Generator().manual_seed(2))["image"]
    changed = (occluded != batch["image"])[:, 0]  # (B, H, W)
    assert changed.float().mean(dim=(1, 2)).max().item() <= 0.25 + 1e-6
    assert changed.float().mean().item() == pytest.approx(0.25, abs=0.02)  # a 10x10 box of 20x20
    for row in range(4):
        values = occluded[row, 0][changed[row]]
        assert torch.all(values == values[0])  # one fill value ...
        assert batch["image"][row].min() <= values[0] <= batch["image"][row].max()  # ... inside the sample's range
        ys, xs = changed[row].nonzero(as_tuple=True)
        assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == len(ys)  # a rectangle


def test_audio_occlusion_is_a_silent_segment():
    batch = _batch()
    occluded = corrupt(batch, "audio", "occlusion", 0.5, torch.Generator().manual_seed(3))["audio"]
    silent = occluded == 0  # (B, L)
    assert torch.all(silent.sum(dim=1) == 400)
    starts = silent.float().argmax(dim=1)
    for row in range(4):
        assert silent[row, starts[row] : starts[row] + 400].all()


def test_impulse_hits_the_level_share_with_extremes_and_text_keeps_its_first_token():
    batch = _batch()
    hit = corrupt(batch, "image", "impulse", 0.3, torch.Generator().manual_seed(4))["image"]
    changed = hit != batch["image"]
    assert changed.float().mean().item() == pytest.approx(0.3, abs=0.02)
    low, high = batch["image"].amin(dim=(1, 2, 3), keepdim=True), batch["image"].amax(dim=(1, 2, 3), keepdim=True)
    assert torch.all((hit == low) | (hit == high) | ~changed)
    text = corrupt(batch, "text", "impulse", 1.0, torch.Generator().manual_seed(5))["text"]
    assert torch.equal(text["attention_mask"].sum(dim=1), torch.ones(64, dtype=torch.long))  # only the first stays
    assert torch.equal(text["attention_mask"][:, 0], torch.ones(64, dtype=torch.long))
    assert torch.equal(text["input_ids"], batch["text"]["input_ids"])


def test_level_zero_changes_nothing():
    batch = _batch()
    for modality, kinds in {"image": ["noise", "occlusion", "impulse"], "audio": ["noise", "occlusion", "impulse"],
                            "text": ["noise", "impulse"]}.items():
        for kind in kinds:
            clean = corrupt(batch, modality, kind, 0.0, torch.Generator().manual_seed(6))[modality]
            if isinstance(clean, dict):
                assert all(torch.equal(clean[k], batch[modality][k]) for k in clean), (modality, kind)
            else:
                assert torch.equal(clean, batch[modality]), (modality, kind)


def test_augmentation_corrupts_one_present_modality_of_a_share_p_of_rows():
    torch.manual_seed(0)
    batch = _batch(4000)
    batch["mask"]["text"] = torch.zeros(4000, dtype=torch.bool)  # text absent: never chosen
    out = CorruptionAugment(p=0.4, max_level=1.0)(batch)
    image = (out["image"] != batch["image"]).flatten(1).any(1)
    audio = (out["audio"] != batch["audio"]).any(1)
    assert not (image & audio).any()  # one modality per row
    assert (image | audio).float().mean().item() == pytest.approx(0.4, abs=0.03)
    assert image.float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert torch.equal(out["text"]["input_ids"], batch["text"]["input_ids"])
    assert out["mask"] is batch["mask"] and out["label"] is batch["label"]
    changed = {"image": image, "audio": audio}  # a drawn level of 0 leaves a chosen row unchanged
    for m in ("image", "audio"):
        assert not (changed[m] & ~out["corrupted"][m]).any()
        assert (out["corrupted"][m] & ~changed[m]).float().mean().item() < 0.01
    assert not out["corrupted"]["text"].any()


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="model.corruption.p"):
        CorruptionAugment(p=1.5)
    with pytest.raises(ConfigError, match="model.corruption.kinds.image"):
        CorruptionAugment(p=0.2, kinds={"image": ["fog"]})
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(_batch(), "image", "fog", 0.5)


def test_a_pretrained_towers_dict_input_has_its_signal_corrupted():
    batch = _batch()
    batch["audio"] = {"input_values": batch["audio"], "attention_mask": torch.ones(64, 800, dtype=torch.long)}
    occluded = corrupt(batch, "audio", "occlusion", 0.5, torch.Generator().manual_seed(7))["audio"]
    assert torch.all((occluded["input_values"] == 0).sum(dim=1) == 400)
    assert occluded["attention_mask"] is batch["audio"]["attention_mask"]
    with pytest.raises(ConfigError, match="input_values"):
        corrupt({**batch, "audio": {"other": batch["image"]}}, "audio", "noise", 0.5)
