"""evaluate.py's `onnx` variant: ONNX Runtime behind the same `variant(batch) -> logits` call as fp32."""

from __future__ import annotations

import pytest
import torch

import fusion
from fusion.eval.run_folder import load_run
from fusion.eval.variants import build_variants
from fusion.inference.examples import batches, prepare

pytestmark = pytest.mark.slow  # ONNX export of every fusion kind: about a minute each on 2 cores


def test_onnx_variant_matches_fp32(tiny_runs, new_manifest):
    run = load_run(tiny_runs["late"])
    predictor = fusion.load(tiny_runs["late"])
    examples = prepare(new_manifest, predictor.preprocessing, predictor.classes)
    batch = next(batches(examples, predictor.preprocessing, predictor.classes, batch_size=7))
    variants, skipped = build_variants(run.model, "cpu", ["fp32", "onnx"])
    assert [v.name for v in variants] == ["fp32", "onnx"] and not skipped
    fp32, onnx = (v(batch) for v in variants)
    assert onnx.shape == fp32.shape
    torch.testing.assert_close(onnx, fp32, atol=1e-4, rtol=1e-4)
    single = {k: (v[:1] if torch.is_tensor(v) else {n: t[:1] for n, t in v.items()}) for k, v in batch.items()}
    torch.testing.assert_close(variants[1](single), variants[0](single), atol=1e-4, rtol=1e-4)


def test_onnx_treats_a_silent_clip_as_removed(tiny_runs, new_manifest):
    """The blank-input rule is inside the exported graph: a silent clip gives the answer of the clip removed."""
    run = load_run(tiny_runs["progressive"])
    assert run.model.blank_as_absent
    predictor = fusion.load(tiny_runs["progressive"])
    examples = prepare(new_manifest, predictor.preprocessing, predictor.classes)
    batch = next(batches(examples, predictor.preprocessing, predictor.classes, batch_size=7))
    rows = batch["mask"]["image"] | batch["mask"]["text"]  # (B,) rows left with an input once the clip is gone
    batch = {k: (v[rows] if torch.is_tensor(v) else {n: t[rows] for n, t in v.items()}) for k, v in batch.items()}
    assert bool(batch["mask"]["audio"].any())
    silent = {**batch, "audio": torch.zeros_like(batch["audio"])}
    removed = {**silent, "mask": {**batch["mask"], "audio": torch.zeros_like(batch["mask"]["audio"])}}
    fp32, onnx = build_variants(run.model, "cpu", ["fp32", "onnx"])[0]
    torch.testing.assert_close(onnx(silent), fp32(removed), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fp32(silent), fp32(removed))


def test_int8_variant_keeps_the_predictions(tiny_runs, new_manifest):
    """int8 weights through ONNX Runtime: the same predictions as fp32 eager, logits within 0.25 (stated
    tolerance of dynamic int8 quantization on these models)."""
    run = load_run(tiny_runs["progressive"])
    predictor = fusion.load(tiny_runs["progressive"])
    examples = prepare(new_manifest, predictor.preprocessing, predictor.classes)
    batch = next(batches(examples, predictor.preprocessing, predictor.classes, batch_size=16))
    variants, skipped = build_variants(run.model, "cpu", ["fp32", "int8"])
    assert [v.name for v in variants] == ["fp32", "int8"] and not skipped
    fp32, int8 = (v(batch) for v in variants)
    assert torch.equal(int8.argmax(1), fp32.argmax(1))
    difference = (int8 - fp32).abs().max()
    assert 0 < difference <= 0.25  # quantized (not the fp32 graph), and close
