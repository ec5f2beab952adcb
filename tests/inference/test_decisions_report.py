"""benchmarks/robustness/decisions.py: its numbers against the same quantities computed here from the run."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch

from fusion.eval.run_folder import load_run, load_test_batches
from tests.helpers.recipes import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("decisions", REPO / "benchmarks" / "robustness" / "decisions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_of_a_progressive_run(tiny_runs):
    report = load_script().report(tiny_runs["progressive"])
    run = load_run(tiny_runs["progressive"])
    with tempfile.TemporaryDirectory() as scratch:
        batches, _ = load_test_batches(run, {}, Path(scratch))
    with torch.no_grad():
        results = [run.model.forward_with_details(b) for b in batches]
    labels = torch.cat([b["label"] for b in batches])
    logits = torch.cat([r.logits for r in results])
    image = torch.cat([r.decision_logits["image"] for r in results]).log_softmax(1)
    fused = torch.cat([r.decision_logits["~fused"] for r in results]).log_softmax(1)
    assert report["rows"] == len(labels)
    assert report["model"] == round(100 * (logits.argmax(1) == labels).float().mean().item(), 2)
    assert report["decisions"]["image"]["acc"] == round(100 * (image.argmax(1) == labels).float().mean().item(), 2)
    assert report["fixed"]["image + fused"] == round(100 * ((image + fused).argmax(1) == labels).float().mean().item(), 2)
    right = torch.zeros_like(labels, dtype=torch.bool)
    for name in results[0].decision_logits:  # every modality's decision and the fused one
        right |= torch.cat([r.decision_logits[name] for r in results]).argmax(1) == labels
    assert report["any_right"] == round(100 * right.float().mean().item(), 2)
    assert report["any_right"] >= max(d["acc"] for d in report["decisions"].values())
    weights = report["gate"]
    assert set(weights) == {"decision/audio", "decision/image", "decision/text", "decision/fused"}
    assert abs(sum(weights.values()) - 1) < 1e-3  # the decision gate's weights sum to one per row
    assert report["gate_fused_tempered"]["1.0"] == report["model"]  # the gate's mix at T = 1 is the model's answer
