"""CPU batch-1 latency of every inference path of trained runs, side by side in one process.

Per run (fusion kind): PyTorch fp32 eager (and, with --compile, torch.compile) against ONNX Runtime in fp32 and
with int8 weights (fusion/inference/onnx_quantize.py: MatMul/Gemm, and MatMul/Gemm/Conv), each at every thread
setting of --threads (ONNX Runtime also with its spin-waiting threads turned off). Measured on the run's test
split (the manifest's `split=test` rows, preprocessed as predict.py does): accuracy, agreement of the
predictions with fp32 eager and max |logit difference|; batch-1 p50 in alternating rounds (every variant once
per round; median of the rounds' p50s), so load from other processes hits every variant alike. The log-mel
front end is inside every graph (the audio tower computes it; the ONNX graph holds the STFT).

End to end from files: for fp32 eager and the fastest variant that keeps the fp32 accuracy, the p50 of
`Predictor.predict({"image": path, "audio": path})` per test row (decode, resize, normalise, model, the
predictions table), and of the decoding and preprocessing alone.

    .venv/bin/python benchmarks/latency/cpu_suite.py --runs early=RUN late=RUN progressive=RUN --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "inference"))

from onnx_vs_torch import test_rows  # noqa: E402  (the manifest's test rows, paths made absolute)

from fusion.eval.latency import measure_latency  # noqa: E402
from fusion.eval.run_folder import load_run  # noqa: E402
from fusion.inference.examples import batches, prepare  # noqa: E402
from fusion.inference.onnx_export import example_inputs, export_onnx  # noqa: E402
from fusion.inference.onnx_quantize import quantize_int8  # noqa: E402
from fusion.inference.onnx_runner import OnnxBackend  # noqa: E402
from fusion.inference.predictor import Predictor, TorchBackend  # noqa: E402
from fusion.inference.preprocessing import Preprocessing  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class ThreadedTorch:
    """A torch backend that sets torch's intra-op thread count before each call."""

    def __init__(self, backend, threads: int):
        self.backend, self.threads = backend, threads

    def __call__(self, batch: dict):
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.backend(batch)


class CompiledBackend(TorchBackend):
    """TorchBackend over torch.compile'd `forward_with_details`."""

    def __init__(self, model):
        super().__init__(model)
        self.compiled = torch.compile(model.forward_with_details)

    def __call__(self, batch: dict):
        with torch.inference_mode():
            result = self.compiled(batch)
        return result.logits.numpy(), {k: v.numpy() for k, v in result.gate_weights.items()}


def build_backends(model, prep: Preprocessing, folder: Path, threads: list[int], compile_: bool) -> dict:
    """name -> backend(batch) -> (logits, gates); names `<path>@<threads>t[-nospin]`."""
    fp32 = folder / "model.onnx"
    export_onnx(model, fp32, example_inputs(prep, 2))
    files = {"onnx_fp32": fp32, "onnx_int8": quantize_int8(fp32, folder / "model.int8.onnx"),
             "onnx_int8_conv": quantize_int8(fp32, folder / "model.int8conv.onnx", ops=("MatMul", "Gemm", "Conv"))}
    torch_backend = TorchBackend(model)
    compiled = CompiledBackend(model) if compile_ else None
    backends = {}
    for t in threads:
        backends[f"torch_fp32@{t}t"] = ThreadedTorch(torch_backend, t)
        if compiled is not None:
            backends[f"torch_compile@{t}t"] = ThreadedTorch(compiled, t)
        for name, path in files.items():
            if name == "onnx_int8_conv" and t != threads[0]:
                continue  # ConvInteger: tens of ms at any thread count; measured at the smallest one only
            backends[f"{name}@{t}t"] = OnnxBackend(path, prep.modalities, t)
            if t > 1:
                backends[f"{name}@{t}t-nospin"] = OnnxBackend(path, prep.modalities, t, spinning=False)
    return backends


def end_to_end(backend, prep: Preprocessing, classes: list[str], rows: pd.DataFrame, n: int) -> dict:
    """p50 ms per single example from its files: the whole `Predictor.predict`, and decode + preprocess alone."""
    predictor = Predictor(backend, classes, prep, Path("."), "model")
    modalities = [m for m in prep.modalities if m in rows.columns]
    whole, front = [], []
    for i in range(n):
        example = {m: rows[m][i] for m in modalities}
        start = time.perf_counter()
        list(batches(prepare(example, prep, classes), prep, classes, batch_size=1))
        front.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        predictor.predict(example)
        whole.append(1000 * (time.perf_counter() - start))
    return {"e2e_p50_ms": statistics.median(whole), "decode_preprocess_p50_ms": statistics.median(front), "rows": n}


def run_kind(kind: str, run_dir: str, args) -> dict:
    run = load_run(run_dir)
    prep = Preprocessing.from_run_config(run.config, run.data_spec["modalities"])
    classes = list(run.data_spec["classes"])
    model = run.model.eval()
    rows = test_rows(run.config)
    examples = prepare(rows, prep, classes)
    all_batches = list(batches(examples, prep, classes, batch_size=64))
    labels = np.concatenate([b["label"].numpy() for b in all_batches])
    singles = list(batches(examples, prep, classes, batch_size=1))[: args.singles]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        backends = build_backends(model, prep, Path(tmp), args.threads, args.compile)
        log(f"{kind}: exported and quantized in {time.perf_counter() - start:.1f} s; {len(backends)} variants")
        logits = {}
        for name, backend in backends.items():
            logits[name] = np.concatenate([backend(b)[0] for b in all_batches])
        reference = logits[f"torch_fp32@{max(args.threads)}t"]
        p50s = {name: [] for name in backends}
        iters = {}
        for name, backend in backends.items():  # a variant far slower than the others gets fewer timed calls
            start = time.perf_counter()
            backend(singles[0])
            first_ms = 1000 * (time.perf_counter() - start)
            iters[name] = max(args.min_iters, min(args.iters, int(args.round_budget_ms / max(first_ms, 1e-3))))
        for r in range(args.rounds):
            for name, backend in backends.items():
                calls = iter(range(10**9))
                p50s[name].append(measure_latency(lambda b=backend, c=calls: b(singles[next(c) % len(singles)]), "cpu",
                                                  min(args.warmup, iters[name]), iters[name]).p50_ms)
            log(f"{kind}: round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in p50s.items()))
        variants = []
        for name in backends:
            path, _, setting = name.partition("@")
            variants.append({"variant": path, "threads": setting, "acc": float((logits[name].argmax(1) == labels).mean()),
                             "agreement": float((logits[name].argmax(1) == reference.argmax(1)).mean()),
                             "max_abs_logit_diff": float(np.abs(logits[name] - reference).max()),
                             "p50_ms": statistics.median(p50s[name]), "p50_ms_rounds": p50s[name],
                             "timed_calls_per_round": iters[name]})
        base = min((v for v in variants if v["variant"] == "torch_fp32"), key=lambda v: v["p50_ms"])
        keeping = [v for v in variants if v["acc"] >= base["acc"]]
        fastest = min(keeping, key=lambda v: v["p50_ms"])
        for v in variants:
            v["speedup_over_fp32_eager"] = base["p50_ms"] / v["p50_ms"]
        e2e = {}
        for label, v in (("fp32_eager", base), ("fastest", fastest)):
            name = f"{v['variant']}@{v['threads']}"
            e2e[label] = {"variant": name, **end_to_end(backends[name], prep, classes, rows, args.e2e_rows)}
            log(f"{kind}: end to end {label} ({name}): {e2e[label]}")
    return {"kind": kind, "run": str(run_dir), "test_rows": int(len(labels)), "variants": variants,
            "fp32_eager": {"threads": base["threads"], "p50_ms": base["p50_ms"], "acc": base["acc"]},
            "fastest_keeping_accuracy": {"variant": fastest["variant"], "threads": fastest["threads"],
                                         "p50_ms": fastest["p50_ms"], "acc": fastest["acc"],
                                         "speedup_over_fp32_eager": base["p50_ms"] / fastest["p50_ms"]},
            "end_to_end": e2e}


TARGETS = {"early": 1.5, "late": 1.8, "progressive": 2.6}


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# CPU latency ({env['cpu_count']} cores, load average at start {env['load_average_at_start']}, "
             f"at end {env.get('load_average_at_end')})", ""]
    lines += ["| fusion | fastest variant keeping the fp32 accuracy | accuracy (fp32 eager) | p50 ms | target | "
              "speed-up over fp32 eager | end to end from files p50 ms (fp32 eager) | decode + preprocess p50 ms |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        f, e = r["fastest_keeping_accuracy"], r["end_to_end"]
        lines.append(f"| {r['kind']} | {f['variant']} @ {f['threads']} | {100 * f['acc']:.2f} % "
                     f"({100 * r['fp32_eager']['acc']:.2f} %) | {f['p50_ms']:.2f} | {TARGETS.get(r['kind'], '')} | "
                     f"{f['speedup_over_fp32_eager']:.1f}x | {e['fastest']['e2e_p50_ms']:.2f} "
                     f"({e['fp32_eager']['e2e_p50_ms']:.2f}) | {e['fastest']['decode_preprocess_p50_ms']:.2f} |")
    for r in results["runs"]:
        lines += ["", f"**{r['kind']}** ({r['test_rows']} test rows)", "",
                  "| variant | threads | accuracy | same prediction as fp32 eager | max abs logit diff | p50 ms "
                  "(median of rounds) | speed-up over fp32 eager |", "|---|---|---|---|---|---|---|"]
        for v in sorted(r["variants"], key=lambda v: v["p50_ms"]):
            lines.append(f"| {v['variant']} | {v['threads']} | {100 * v['acc']:.2f} % | {100 * v['agreement']:.2f} % | "
                         f"{v['max_abs_logit_diff']:.1e} | {v['p50_ms']:.3f} | {v['speedup_over_fp32_eager']:.2f}x |")
    lines += ["", "```bash", *results["commands"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="kind=run_folder ...")
    parser.add_argument("--out", type=Path, required=True, help="output folder: cpu_suite.json, cpu_suite.md")
    parser.add_argument("--threads", default="1,2", help="thread counts to measure, comma-separated")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-iters", type=int, default=10, help="timed calls per round of a slow variant")
    parser.add_argument("--round-budget-ms", type=float, default=2000,
                        help="a variant gets at most this much time per round (fewer calls, at least --min-iters)")
    parser.add_argument("--singles", type=int, default=50, help="test rows cycled through at batch 1")
    parser.add_argument("--e2e-rows", type=int, default=50, help="test rows timed end to end from their files")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (about a minute per model)")
    args = parser.parse_args()
    args.threads = sorted({int(t) for t in args.threads.split(",")})
    if any(t < 1 for t in args.threads):
        raise SystemExit(f"--threads: counts must be >= 1, got {args.threads}")
    import onnxruntime

    args.out.mkdir(parents=True, exist_ok=True)
    results = {"environment": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
                               "onnxruntime": onnxruntime.__version__,
                               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "runs": []}
    for item in args.runs:
        kind, _, run_dir = item.partition("=")
        results["runs"].append(run_kind(kind, run_dir, args))
        (args.out / "cpu_suite.json").write_text(json.dumps(results, indent=2))
    results["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["commands"] = [".venv/bin/python benchmarks/latency/cpu_suite.py " + " ".join(sys.argv[1:])]
    (args.out / "cpu_suite.json").write_text(json.dumps(results, indent=2))
    (args.out / "cpu_suite.md").write_text(markdown(results))
    print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
