"""ONNX Runtime against PyTorch for trained early, late and progressive runs, side by side in one process.

For each run: the model is exported to ONNX (as export.py does), then on the run's test split (the manifest's
`split=test` rows, preprocessed as predict.py does) both backends predict; reported are the agreement rate of
the predictions, the max |logit difference|, each backend's accuracy, and the batch-1 p50 latency of each,
measured in alternating rounds (torch, onnx, torch, onnx ...) on the same single examples with the same thread
count, so the ratio compares like with like.

    .venv/bin/python benchmarks/inference/onnx_vs_torch.py \
        --runs early=checkpoints/early/<run> late=checkpoints/late/<run> progressive=checkpoints/progressive/<run>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusion.eval.latency import measure_latency
from fusion.eval.run_folder import load_run
from fusion.inference.examples import batches, prepare
from fusion.inference.onnx_export import example_inputs, export_onnx
from fusion.inference.onnx_runner import OnnxBackend
from fusion.inference.predictor import TorchBackend
from fusion.inference.preprocessing import Preprocessing

HERE = Path(__file__).resolve().parent


def test_rows(config: dict) -> pd.DataFrame:
    """The manifest's test rows, file paths made absolute."""
    manifest = Path(config["data"]["manifest"])
    frame = pd.read_csv(manifest, keep_default_na=False, dtype=str)
    frame = frame[frame["split"] == "test"].reset_index(drop=True)
    for column in ("image", "audio"):
        if column in frame:
            frame[column] = [str((manifest.parent / v).resolve()) if v else "" for v in frame[column]]
    return frame


def compare(kind: str, run_dir: str, threads: int, warmup: int, iters: int, rounds: int) -> dict:
    run = load_run(run_dir)
    spec = run.data_spec
    prep = Preprocessing.from_run_config(run.config, spec["modalities"])
    classes = list(spec["classes"])
    model = run.model.eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, path, example_inputs(prep, 2))
        export_seconds = time.perf_counter() - start
        onnx = OnnxBackend(path, prep.modalities, threads)
        torch_backend = TorchBackend(model)
        examples = prepare(test_rows(run.config), prep, classes)
        all_batches = list(batches(examples, prep, classes, batch_size=64))
        torch_logits, onnx_logits, labels = [], [], []
        for batch in all_batches:
            torch_logits.append(torch_backend(batch)[0])
            onnx_logits.append(onnx(batch)[0])
            labels.append(batch["label"].numpy())
        t, o, y = np.concatenate(torch_logits), np.concatenate(onnx_logits), np.concatenate(labels)
        single = next(iter(batches(examples, prep, classes, batch_size=1)))
        torch_p50, onnx_p50 = [], []
        for _ in range(rounds):
            torch_p50.append(measure_latency(lambda: torch_backend(single), "cpu", warmup, iters).p50_ms)
            onnx_p50.append(measure_latency(lambda: onnx(single), "cpu", warmup, iters).p50_ms)
    ratios = [a / b for a, b in zip(torch_p50, onnx_p50, strict=True)]
    return {"kind": kind, "run": str(run_dir), "test_rows": int(len(y)),
            "agreement": float((t.argmax(1) == o.argmax(1)).mean()), "max_abs_logit_diff": float(np.abs(t - o).max()),
            "acc_torch": float((t.argmax(1) == y).mean()), "acc_onnx": float((o.argmax(1) == y).mean()),
            "p50_ms_torch": statistics.median(torch_p50), "p50_ms_onnx": statistics.median(onnx_p50),
            "speedup_onnx_over_torch": statistics.median(ratios), "p50_ms_torch_rounds": torch_p50,
            "p50_ms_onnx_rounds": onnx_p50, "export_seconds": round(export_seconds, 1)}


def write_readme(results: dict, command: str) -> None:
    lines = ["# Inference: ONNX Runtime vs PyTorch", "",
             "Batch-1 p50 latency on the CPU (same process, alternating rounds, median of the rounds' p50s), agreement "
             "of the predictions and max |logit difference| on the test split. Models trained with "
             "`train.py recipe=<kind> data.manifest=<MNIST+FSDD manifest, test speaker theo>` (6 epochs).", "",
             "| fusion | test rows | agreement | max abs logit diff | acc torch / onnx | p50 torch (ms) | p50 onnx (ms) | torch / onnx |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['kind']} | {r['test_rows']} | {100 * r['agreement']:.2f} % | {r['max_abs_logit_diff']:.2e} | "
                     f"{100 * r['acc_torch']:.2f} / {100 * r['acc_onnx']:.2f} % | {r['p50_ms_torch']:.2f} | "
                     f"{r['p50_ms_onnx']:.2f} | {r['speedup_onnx_over_torch']:.2f}x |")
    env = results["environment"]
    lines += ["", f"Machine: {env['cpu_count']}-core CPU ({env['machine']}), {env['threads']} threads for both "
              f"backends; torch {env['torch']}, onnxruntime {env['onnxruntime']}; {results['rounds']} rounds of "
              f"{results['iters']} timed calls after {results['warmup']} warm-up calls each. The latency includes "
              "the whole model (log-mel front end, encoders, fusion) on already preprocessed inputs. Raw numbers: "
              "`results.json`."]
    if "load_average_at_start" in env:
        lines += ["", f"Load average when the run started: {env['load_average_at_start']} (other jobs on the same "
                  "cores inflate the latencies, PyTorch's far more than ONNX Runtime's)."]
    lines += ["", "```bash", command, "```", ""]
    (HERE / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="kind=run_folder ...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--merge", action="store_true", help="keep the other kinds already in --out")
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    results = {"environment": {"cpu_count": torch.multiprocessing.cpu_count(), "machine": platform.machine(),
                               "threads": args.threads, "torch": torch.__version__,
                               "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                               "onnxruntime": onnxruntime.__version__},
               "warmup": args.warmup, "iters": args.iters, "rounds": args.rounds, "runs": []}
    for item in args.runs:
        kind, _, run_dir = item.partition("=")
        result = compare(kind, run_dir, args.threads, args.warmup, args.iters, args.rounds)
        print(json.dumps({k: v for k, v in result.items() if not k.endswith("_rounds")}), flush=True)
        results["runs"].append(result)
    command = ".venv/bin/python benchmarks/inference/onnx_vs_torch.py --runs " + " ".join(args.runs)
    if args.threads != 2 or args.iters != 100 or args.rounds != 5 or args.warmup != 20:
        command += f" --threads {args.threads} --warmup {args.warmup} --iters {args.iters} --rounds {args.rounds}"
    results["commands"] = [command]
    if args.merge and Path(args.out).is_file():
        previous = json.loads(Path(args.out).read_text())
        kinds = {r["kind"] for r in results["runs"]}
        results["runs"] = [r for r in previous["runs"] if r["kind"] not in kinds] + results["runs"]
        results["commands"] = previous.get("commands", []) + [command + " --merge"]
    Path(args.out).write_text(json.dumps(results, indent=2))
    write_readme(results, "\n".join(results["commands"]))


if __name__ == "__main__":
    main()
