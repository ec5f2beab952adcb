import json

import matplotlib.image
import pytest
from eval_toy import toy_batches, trained_toy

from fusion.eval.benchmark import evaluate_model, machine_info
from fusion.eval.pareto import pareto_front
from fusion.eval.report import write_report
from fusion.eval.robustness import evaluate_robustness


def test_pareto_front_matches_brute_force_example():
    latencies = [1.0, 2.0, 3.0, 2.0, 0.5, 5.0]
    accuracies = [0.90, 0.95, 0.94, 0.80, 0.70, 0.99]
    assert pareto_front(latencies, accuracies) == [4, 0, 1, 5]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [0, 1]  # ties dominate neither


def test_evaluate_model_rows_and_report_files_are_written_and_parse(tmp_path):
    model, batches = trained_toy(), toy_batches()
    lines: list[str] = []
    rows, skipped = evaluate_model("late", "late", model, batches, num_classes=3, variants=("fp32", "int8", "bf16", "graph"),
                                   warmup=2, iters=10, throughput_batch_sizes=(4, 16), log=lines.append)
    assert [r["variant"] for r in rows] == ["fp32"]
    assert "late/bf16@cpu" in skipped  # CUDA only
    assert skipped["late/int8@cpu"] == "ONNX export covers fusion classifiers only"  # int8 runs in ONNX Runtime
    assert skipped["late/graph@cpu"] == "CUDA graphs need a CUDA device"
    assert any("fp32 on cpu: p50" in line for line in lines)  # progress is printed per variant
    fp32 = rows[0]
    assert fp32["flops"] == 2 * (16 * 32 + 32 * 3 + 20 * 32 + 32 * 3)  # per sample, batch 1
    assert fp32["num_test_samples"] == 24 and set(fp32["throughput"]) == {"4", "16"}
    assert fp32["latency_p50_ms"] <= fp32["latency_p95_ms"] <= fp32["latency_p99_ms"]

    report = {"machine": machine_info(["cpu"]), "settings": {"threads": 1}, "rows": rows,
              "robustness": {"late": evaluate_robustness(model, batches, "cpu", 3, levels=(0.0, 1.0))},
              "skipped": skipped}
    paths = write_report(report, tmp_path / "out")
    parsed = json.loads(paths["json"].read_text())
    assert [r["variant"] for r in parsed["rows"]] == ["fp32"]
    assert parsed["rows"][0]["acc"] == fp32["acc"]
    assert any(r["on_front"] for r in parsed["rows"])
    md = paths["md"].read_text()
    table = [line for line in md.splitlines() if line.startswith("| late |")]
    # one variant row, the fastest-variant row, one row of subset accuracies, one per modality and corruption (2 x 3)
    assert len(table) == 1 + 1 + 1 + 2 * 3
    assert "| late | late | cpu | fp32 |" in md and "| 1.00x |" in md  # fp32 is the fastest that keeps its accuracy
    assert sum("| noise |" in line for line in table) == 2 and sum("| impulse |" in line for line in table) == 2
    assert f"{100 * fp32['acc']:.2f} %" in table[0]
    image = matplotlib.image.imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 100
    plot = matplotlib.image.imread(paths["robustness_png"])
    assert plot.ndim == 3 and plot.shape[0] > 300  # a row of panels per modality


def test_report_without_rows_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_report({"rows": []}, tmp_path)


def test_fastest_variant_keeps_the_fp32_accuracy():
    from fusion.eval.report import fastest_keeping_accuracy

    def row(variant, acc, p50, device="cpu"):
        return {"model": "late", "fusion": "late", "device": device, "variant": variant, "acc": acc,
                "latency_p50_ms": p50}

    rows = [row("fp32", 0.95, 4.0), row("int8", 0.94, 1.0), row("onnx", 0.95, 2.0), row("compile", 0.96, 3.0),
            row("fp32", 0.95, 3.0, "cuda"), row("bf16", 0.95, 4.0, "cuda")]
    best = fastest_keeping_accuracy(rows)
    assert [(b["device"], b["variant"]) for b in best] == [("cpu", "onnx"), ("cuda", "fp32")]
    assert best[0]["speedup_over_fp32"] == 2.0 and best[1]["speedup_over_fp32"] == 1.0  # int8 lost accuracy
