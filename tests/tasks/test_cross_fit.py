"""Cross-fitted decision gate: group folds, fold manifests, gate fitting on stored decisions, end to end."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fusion.data.manifest import ManifestRow
from fusion.fusions.progressive import FUSED, ProgressiveFusion
from fusion.tasks.cross_fit import (
    assign_folds,
    decision_accuracy,
    fit_decision_gate,
    merge_decisions,
    write_fold_manifest,
)
from fusion.training import train
from tests.helpers.recipes import compose_recipe, tiny_overrides


def rows_of(groups: list[str | None]) -> list[ManifestRow]:
    return [ManifestRow(i + 1, str(i % 3), "train", {"image": f"/x/{i}.png"}, g) for i, g in enumerate(groups)]


def test_folds_keep_groups_together_and_balance_rows():
    groups = ["ann"] * 6 + ["bob"] * 5 + ["cy"] * 4 + ["dee"] * 3 + [None, None]
    rows = rows_of(groups)
    fold_of = assign_folds(rows, folds=3, seed=0)
    assert set(fold_of) == {r.row for r in rows}
    for name in ("ann", "bob", "cy", "dee"):
        assert len({fold_of[r.row] for r in rows if r.group == name}) == 1, name
    sizes = sorted(sum(1 for f in fold_of.values() if f == k) for k in range(3))
    assert sizes == [6, 7, 7]  # 6 | 5+2 | 4+3 (ungrouped rows are groups of one)
    assert assign_folds(rows, folds=3, seed=0) == fold_of  # deterministic


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cross_fit.folds=3.*2 group"):
        assign_folds(rows_of(["a", "a", "b"]), folds=3, seed=0)


def test_fold_manifest_holds_out_exactly_one_fold(tmp_path):
    train_rows = rows_of(["a", "a", "b", "c"])
    val_rows = [ManifestRow(9, "1", "val", {"image": "/x/v.png", "text": "one, two"}, "a")]
    fold_of = {1: 0, 2: 0, 3: 1, 4: 1}
    held = write_fold_manifest(tmp_path / "m.csv", train_rows, val_rows, fold_of, fold=1)
    with open(tmp_path / "m.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert held == 2
    assert [r["split"] for r in written] == ["train", "train", "test", "test", "val"]
    assert written[-1]["text"] == "one, two" and written[-1]["group"] == "a"
    assert written[0]["image"] == "/x/0.png" and written[0]["text"] == ""


def stored_decisions(n: int, audio_reliable: bool, seed: int) -> dict:
    """Decisions of a 3-decision progressive fusion: image right 85 % (unsure when wrong), audio confidently
    right or (when unreliable) confidently wrong, fused following audio."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (n,), generator=g)
    wrong = (label + torch.randint(1, 4, (n,), generator=g)) % 4
    image_ok = torch.rand(n, generator=g) < 0.85
    image = torch.where(image_ok[:, None], 4 * torch.nn.functional.one_hot(label, 4), 1.0 * torch.nn.functional.one_hot(wrong, 4))
    audio_target = label if audio_reliable else torch.where(torch.rand(n, generator=g) < 0.3, label, wrong)
    audio = 6 * torch.nn.functional.one_hot(audio_target, 4).float()
    ones = torch.ones(n, dtype=torch.bool)
    return {"decisions": {"audio": audio, "image": image.float(), FUSED: audio.clone()},
            "mask": {"audio": ones, "image": ones, FUSED: ones}, "label": label}


def test_gate_fitted_on_out_of_fold_decisions_stops_trusting_an_unreliable_modality():
    torch.manual_seed(0)
    fusion = ProgressiveFusion({"audio": 8, "image": 8}, 4, hidden_dim=16, decision_gate_inputs="confidence")
    # in training the audio was always right: fit the gate there first, as joint training would
    fit_decision_gate(fusion, stored_decisions(512, audio_reliable=True, seed=1), epochs=20, lr=1e-2)
    unseen = stored_decisions(1024, audio_reliable=False, seed=2)
    before = decision_accuracy(fusion, unseen)
    out_of_fold = merge_decisions([stored_decisions(512, audio_reliable=False, seed=s) for s in (3, 4)])
    gate_before = {n: p.detach().clone() for n, p in fusion.decision_gate.named_parameters()}
    others_before = {n: p.detach().clone() for n, p in fusion.named_parameters() if not n.startswith("decision_gate.")}
    losses = fit_decision_gate(fusion, out_of_fold, epochs=30, lr=1e-2)
    after = decision_accuracy(fusion, unseen)
    assert losses[-1] < losses[0]
    assert before["gated"] < 0.5  # the training-set gate follows the (now unreliable) audio
    assert after["gated"] >= after["image"] - 0.01 and after["image"] == pytest.approx(0.85, abs=0.04)
    assert any(not torch.equal(gate_before[n], p) for n, p in fusion.decision_gate.named_parameters())
    assert all(torch.equal(others_before[n], p) for n, p in fusion.named_parameters() if n in others_before)


def test_states_gate_cannot_be_fitted_on_decisions():
    fusion = ProgressiveFusion({"audio": 8, "image": 8}, 4, hidden_dim=16)
    with pytest.raises(ValueError, match="decision_gate_inputs=confidence"):
        fit_decision_gate(fusion, stored_decisions(8, True, 0), epochs=1)


def test_cross_fit_end_to_end(tiny_digits, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_digits, run, "trainer.max_epochs=1", "cross_fit.folds=2", "cross_fit.epochs=3",
                               "model.fusion.decision_gate_inputs=confidence")
    metrics = train(compose_recipe("progressive", overrides))
    for fold in (0, 1):
        fold_dir = run / "cross_fit" / f"fold{fold}"
        assert (fold_dir / "best.ckpt").is_file() and (fold_dir / "out_of_fold.pt").is_file()
        with open(fold_dir / "manifest.csv", newline="") as f:
            splits = [r["split"] for r in csv.DictReader(f)]
        assert splits.count("val") == 16 and splits.count("train") + splits.count("test") == 48
        assert splits.count("test") == 24  # tiny rows have no group: balanced folds of single rows
    decisions = [torch.load(run / "cross_fit" / f"fold{k}" / "out_of_fold.pt", weights_only=True) for k in (0, 1)]
    assert sum(len(d["label"]) for d in decisions) == 48
    assert set(decisions[0]["decisions"]) == {"audio", "image", "text", FUSED}
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["cross_fit/oof_acc/gated_after"] == metrics["cross_fit/oof_acc/gated_after"]
    assert {"test/decision_acc/image", "test/decision_acc/fused"} <= set(saved)
    # starting the run again (e.g. after an interruption) reuses the folds' saved decisions
    stamp = (run / "cross_fit" / "fold0" / "best.ckpt").stat().st_mtime_ns
    train(compose_recipe("progressive", overrides))
    assert (run / "cross_fit" / "fold0" / "best.ckpt").stat().st_mtime_ns == stamp


def test_cross_fit_rejects_a_gate_that_reads_states(tiny_digits, tmp_path):
    overrides = tiny_overrides(tiny_digits, tmp_path / "run", "trainer.max_epochs=1", "cross_fit.folds=2")
    with pytest.raises(ValueError, match="decision_gate_inputs=confidence"):
        train(compose_recipe("progressive", overrides))
