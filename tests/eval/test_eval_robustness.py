import pytest
import torch
from eval_toy import toy_batches, trained_toy

from fusion.eval.accuracy import classification_metrics, predict
from fusion.eval.robustness import (
    add_effective_robustness,
    add_noise,
    effective_robustness,
    evaluate_robustness,
    relative_robustness,
    remove_modality,
)


def _masked_only(batch: dict, modality: str) -> dict:
    masked = dict(batch)
    masked["mask"] = {**batch["mask"], modality: torch.zeros_like(batch["mask"][modality])}
    return masked


def _masked_rows_with_input(batch: dict, modality: str) -> dict:
    """The oracle: mask the modality by hand, keep samples that still have another modality."""
    masked = _masked_only(batch, modality)
    keep = torch.stack(list(masked["mask"].values()), dim=1).any(dim=1)
    return {key: ({m: v[keep] for m, v in value.items()} if key == "mask" else value[keep])
            for key, value in masked.items()}


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_removed_modality_accuracy_equals_evaluating_with_it_masked(modality):
    model, batches = trained_toy(), toy_batches()
    result = evaluate_robustness(model, batches, "cpu", num_classes=3, levels=(0.0, 1.0))
    predictions, labels = predict(model, batches, "cpu", lambda b: _masked_rows_with_input(b, modality))
    assert result["removed"][modality] == classification_metrics(predictions, labels, 3)["acc"]
    others = "audio" if modality == "image" else "image"
    assert result["subsets"][others]["samples"] == labels.numel()
    assert result["subsets"]["image"]["samples"] == 24  # image is always present in the toy data
    assert result["subsets"]["audio+image"]["acc"] == classification_metrics(*predict(model, batches, "cpu"), 3)["acc"]
    # and the logits themselves agree: removal leaks nothing the mask hides
    for batch in batches:
        with torch.no_grad():
            torch.testing.assert_close(model(remove_modality(batch, modality)), model(_masked_only(batch, modality)))
    assert set(result["removed"]) == {"image", "audio"}


def test_noise_level_zero_is_identity_and_level_sets_noise_to_signal_ratio():
    batch = toy_batches(1, 256)[0]
    clean = add_noise(batch, "audio", 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(clean["audio"], batch["audio"])
    noisy = add_noise(batch, "audio", 0.5, torch.Generator().manual_seed(0))
    present = batch["mask"]["audio"]
    ratio = (noisy["audio"] - batch["audio"])[present].std(dim=1) / batch["audio"][present].std(dim=1)  # (P,)
    assert ratio.mean().item() == pytest.approx(0.5, rel=0.1)
    assert torch.equal(noisy["audio"][~present], batch["audio"][~present])  # silent (missing) rows stay silent
    assert torch.equal(noisy["image"], batch["image"])  # other modalities untouched
    assert batch["audio"] is not noisy["audio"]


def test_text_noise_replaces_only_attended_tokens_at_the_given_rate():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 1000, (64, 32), generator=generator)
    attention = torch.ones(64, 32, dtype=torch.long)
    attention[:, 24:] = 0
    input_ids[:, 24:] = 0
    batch = {"text": {"input_ids": input_ids, "attention_mask": attention}, "mask": {"text": torch.ones(64).bool()},
             "label": torch.zeros(64, dtype=torch.long)}
    noisy = add_noise(batch, "text", 0.3, torch.Generator().manual_seed(1))["text"]["input_ids"]
    changed = noisy != input_ids
    assert not changed[:, 24:].any()
    assert changed[:, :24].float().mean().item() == pytest.approx(0.3, abs=0.03)


def test_relative_and_effective_robustness_against_hand_values():
    levels = [0.0, 0.5, 1.0]
    assert relative_robustness(levels, [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert relative_robustness(levels, [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    # same drop as late fusion, from a higher start: zero effective robustness
    assert effective_robustness(levels, [0.9, 0.7, 0.5], [0.8, 0.6, 0.4]) == pytest.approx(0.0)
    # keeps 0.1 more at level 0.5 and 0.2 more at 1.0: area (0 + 0.1)/2*0.5 + (0.1 + 0.2)/2*0.5 = 0.1
    assert effective_robustness(levels, [0.9, 0.8, 0.7], [0.8, 0.6, 0.4]) == pytest.approx(0.1)


def test_noise_degrades_accuracy_and_late_fusion_reference_gets_zero():
    model, batches = trained_toy(), toy_batches(4, 16)
    levels = (0.0, 2.0, 8.0)
    result = evaluate_robustness(model, batches, "cpu", num_classes=3, levels=levels)
    curve = result["corruption"]["image"]["noise"]["acc"]
    assert curve[0] > curve[-1]
    results = {"late": result, "other": evaluate_robustness(trained_toy(seed=3), batches, "cpu", 3, levels)}
    add_effective_robustness(results, "late")
    assert results["late"]["corruption"]["image"]["noise"]["effective_robustness"] == 0.0
    assert "effective_robustness" in results["other"]["corruption"]["audio"]["impulse"]
    assert result["corruption"]["image"]["noise"]["gate"] == {}  # the toy model has no gate
