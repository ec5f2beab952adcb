"""benchmarks/robustness/summarize.py: the acceptance table's gaps and their seed errors against hand-computed values."""

from __future__ import annotations

import importlib.util
import json
import statistics

from tests.helpers.recipes import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("summarize", REPO / "benchmarks" / "robustness" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_runs(root, split: str, row: str, runs: list[dict]) -> None:
    for seed, metrics in enumerate(runs):
        folder = root / split / row / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_table_reports_each_gap_with_its_error(tmp_path):
    summarize = load_script()
    for split, shift in (("jackson", 0.0), ("theo", 0.1)):
        write_runs(tmp_path, split, "audio_only", [{"test/acc": 0.70 - shift}, {"test/acc": 0.62 - shift}])
        write_runs(tmp_path, split, "image_only", [{"test/acc": 0.99}, {"test/acc": 0.98}])
        write_runs(tmp_path, split, "early", [
            {"test/acc": 0.995, "test/decision_acc/audio": 0.60 - shift, "test/decision_acc/image": 0.985},
            {"test/acc": 0.993, "test/decision_acc/audio": 0.64 - shift, "test/decision_acc/image": 0.975}])
    lines = summarize.checks(summarize.summarize(tmp_path))
    jackson = next(line for line in lines if line.startswith("| jackson | early |"))
    error = 100 * (statistics.variance([0.60, 0.64]) / 2 + statistics.variance([0.70, 0.62]) / 2) ** 0.5
    assert f"62.00 / 66.00 (-4.0 ± {error:.1f})" in jackson
    assert "98.00 / 98.50 (-0.5 ± 0.7)" in jackson
    assert "| 99.40 (99.5 / 99.3) | 98.50 (+0.9 ± 0.5) |" in jackson  # clean, against the best unimodal model
    mean_row = next(line for line in lines if line.startswith("| early |"))
    assert f"-4.0 ± {error * 2**0.5 / 2:.1f} (2 splits)" in mean_row
    assert any("moves by 5.7 points from seed to seed" in line and "2 degrees of freedom" in line for line in lines)
