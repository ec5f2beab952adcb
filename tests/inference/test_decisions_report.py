"""benchmarks/robustness/decisions.py: its numbers against the same quantities computed here from the run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fusion.data.corruption import corrupt
from fusion.eval.run_folder import load_run, load_test_batches
from tests.helpers.recipes import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("decisions", REPO / "benchmarks" / "robustness" / "decisions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_outputs(path):
    """The run, its FusionResult per test batch, and the labels and model logits over the test split."""
    run = load_run(path)
    batches, _ = load_test_batches(run, {})
    with torch.no_grad():
        results = [run.model.forward_with_details(b) for b in batches]
    return run, results, torch.cat([b["label"] for b in batches]), torch.cat([r.logits for r in results])


def percent(right: torch.Tensor) -> float:
    return round(100 * right.float().mean().item(), 2)


def test_report_of_a_progressive_run(tiny_runs):
    report = load_script().report(tiny_runs["progressive"])
    run, results, labels, logits = run_outputs(tiny_runs["progressive"])
    image = torch.cat([r.decision_logits["image"] for r in results]).log_softmax(1)
    fused = torch.cat([r.decision_logits["~fused"] for r in results]).log_softmax(1)
    seen = {m: torch.cat([r.mask[m] for r in results]) for m in run.model.modalities}
    complete = torch.stack(list(seen.values()), dim=1).all(dim=1)
    assert 0 < int(complete.sum()) < len(labels)  # the tiny set has rows without some modality

    assert report["rows"] == len(labels) and report["complete_rows"] == int(complete.sum())
    assert report["model"] == percent(logits.argmax(1) == labels)
    assert report["model_complete"] == percent((logits.argmax(1) == labels)[complete])
    # a modality's decision is scored where the modality was present, as training logs it
    assert report["decisions"]["image"]["acc"] == percent((image.argmax(1) == labels)[seen["image"]])
    logged = json.loads((tiny_runs["progressive"] / "metrics.json").read_text())["test/decision_acc/image"]
    assert report["decisions"]["image"]["acc"] == pytest.approx(100 * logged, abs=0.01)
    assert report["fixed"]["image + fused"] == percent(((image + fused).argmax(1) == labels)[complete])
    right = torch.zeros_like(labels, dtype=torch.bool)
    for name in results[0].decision_logits:  # every modality's decision and the fused one
        right |= torch.cat([r.decision_logits[name] for r in results]).argmax(1) == labels
    assert report["any_right"] == percent(right[complete])
    assert report["any_right"] >= report["most_confident"]  # any per-row choice is bounded by it
    weights = report["gate"]
    assert set(weights) == {"decision/audio", "decision/image", "decision/text", "decision/fused"}
    assert abs(sum(weights.values()) - 1) < 1e-3  # the decision gate's weights sum to one per row
    # the gate's mix at T = 1 is the model's answer where every modality is present
    assert report["gate_fused_tempered"]["1.0"] == report["model_complete"]


def test_report_of_a_late_run(tiny_runs):
    """Late fusion's heads are its decisions: the gate's mix is the model's answer, and its mixture and the rows a
    decision gets right while the model is wrong are computed from them."""
    report = load_script().report(tiny_runs["late"])
    run, results, labels, logits = run_outputs(tiny_runs["late"])
    decisions = {m: torch.cat([r.unimodal_logits[m] for r in results]).log_softmax(1) for m in run.model.modalities}
    gate = {m: torch.cat([r.gate_weights[f"decision/{m}"] for r in results]) for m in run.model.modalities}
    complete = torch.stack([torch.cat([r.mask[m] for r in results]) for m in run.model.modalities], dim=1).all(dim=1)

    assert set(report["decisions"]) == set(run.model.modalities) and report["gate_fused_tempered"] == {}
    mixture = torch.logsumexp(torch.stack([gate[m].clamp_min(1e-30).log()[:, None] + decisions[m] for m in gate]), dim=0)
    assert report["gate_mixture"] == percent((mixture.argmax(1) == labels)[complete])
    product = sum(gate[m][:, None] * decisions[m] for m in gate)  # late fusion's answer on complete rows
    assert percent((product.argmax(1) == labels)[complete]) == report["model_complete"]
    wrong = (logits.argmax(1) != labels) & complete
    for m in run.model.modalities:
        assert report["overruled"][m]["rows"] == int((wrong & (decisions[m].argmax(1) == labels)).sum())


def test_report_on_corrupted_inputs(tiny_runs):
    """With a corruption, the decisions are read from the corrupted batches (same generator as the script's), and
    each decision's top-class share is the share of its rows given its most frequent answer."""
    module = load_script()
    report = module.report(tiny_runs["late"], corruption=("audio", "impulse", 1.0))
    run, _, _, _ = run_outputs(tiny_runs["late"])
    batches, _ = load_test_batches(run, {})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        results = [run.model.forward_with_details(corrupt(b, "audio", "impulse", 1.0, generator)) for b in batches]
    labels = torch.cat([b["label"] for b in batches])
    audio = torch.cat([r.unimodal_logits["audio"] for r in results])
    seen = torch.cat([r.mask["audio"] for r in results]).bool()
    answers = audio[seen].argmax(1)
    assert report["decisions"]["audio"]["acc"] == percent((audio.argmax(1) == labels)[seen])
    assert report["decisions"]["audio"]["top_class_share"] == round(torch.bincount(answers).max().item() / len(answers), 3)
    assert module.top_class_share(torch.tensor([3, 3, 3, 1])) == 0.75
    assert report != module.report(tiny_runs["late"])  # the corruption reached the decisions
