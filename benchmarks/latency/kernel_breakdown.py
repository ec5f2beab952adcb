"""Where the GPU time of the graphed paths goes, kernel by kernel (torch.profiler), on one CUDA card.

Training: one step of the default progressive recipe at batch 64 (batches already on the GPU, as in
gpu_suite.py) in the graphed modes of fusion/tasks/train_step.py: samples/s over one epoch after 10 warm-up
steps, the busy fraction of gpu_suite's profile, and the kernels of one replay by count and time.
Inference: the batch-1 CUDA-graph replay (fusion/inference/cuda_graph.py) of each fusion kind in fp32, in bf16
(`bf16_copy`) and in bf16 with the convolutions and their batch norms kept in fp32, with `--compiled` also the
graph of the compiled forward in fp32 and bf16: p50 and the kernels of one replay. Fresh weights: the kernels do not depend on the values.

    python benchmarks/latency/kernel_breakdown.py --data ../shared/data --out /tmp/kernels

Writes OUT/kernel_breakdown.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_suite import build_model, epoch_batches, load_data, profile_steps, sync_free_step  # noqa: E402

from fusion.data.batches import take_batch, to_device  # noqa: E402
from fusion.eval.latency import measure_latency  # noqa: E402
from fusion.inference.cuda_graph import GraphedModel, bf16_copy  # noqa: E402

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def kernels(fn, calls: int) -> dict:
    """GPU kernels of `calls` calls of `fn`, per call: count, summed microseconds, the top 25 by time and by count
    as (microseconds, count, name)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    by_name: dict[str, list[float]] = defaultdict(list)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_name[event.name].append(event.device_time)
    rows = sorted(((sum(v) / calls, len(v) / calls, name[:110]) for name, v in by_name.items()), reverse=True)
    return {"kernels": sum(len(v) for v in by_name.values()) / calls,
            "kernel_us": sum(sum(v) for v in by_name.values()) / calls,
            "top_time": rows[:25], "top_count": sorted(rows, key=lambda r: -r[1])[:25]}


def train_row(mode: str, spec: dict, train_dev: dict, device: torch.device) -> dict:
    init, hparams = build_model("progressive", spec, 0)
    step = sync_free_step(init.to(device), hparams, mode, device)
    batches = epoch_batches(train_dev, 64, 0, 0)
    for batch in batches[:10]:  # warm-up, capture (and compilation)
        step.step(batch)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[10:]:
        step.step(batch)
    torch.cuda.synchronize()
    seconds, steps = time.perf_counter() - start, len(batches) - 10
    row = {"mode": mode, "samples_per_s": steps * 64 / seconds, "ms_per_step": 1000 * seconds / steps,
           **profile_steps(step.step, batches[:20], device), **kernels(lambda: step.step(batches[0]), 5)}
    print(f"train {mode}: {row['samples_per_s']:.0f} samples/s, busy {row['gpu_busy_fraction']:.3f}, "
          f"{row['kernels']:.0f} kernels, {row['kernel_us']:.0f} us of kernels per step", flush=True)
    return row


def inference_rows(kind: str, spec: dict, single: dict, device: torch.device, compiled: bool) -> list[dict]:
    model, _ = build_model(kind, spec, 0)
    model = model.to(device).eval()
    conv_fp32 = bf16_copy(model)
    for module in conv_fp32.modules():
        if isinstance(module, CONVOLUTIONS):
            module.float()  # its input is cast to the weight's dtype by bf16_copy's hook
    variants = [("fp32", model, False), ("bf16", bf16_copy(model).eval(), False), ("bf16_conv_fp32", conv_fp32.eval(), False)]
    if compiled:
        variants += [("compile_fp32", model, True), ("compile_bf16", bf16_copy(model).eval(), True)]
    rows = []
    for name, variant, compile_ in variants:
        if compile_:
            torch._dynamo.reset()  # each compiled model below Dynamo's recompile limit
        graphed = GraphedModel(variant, compile=compile_)
        call = lambda g=graphed: g(single)  # noqa: E731
        latency = measure_latency(call, device, warmup=30, iters=300)
        row = {"kind": kind, "variant": name, "p50_ms": latency.p50_ms, **kernels(call, 20)}
        print(f"infer {kind}/{name}: p50 {latency.p50_ms:.3f} ms, {row['kernels']:.0f} kernels, "
              f"{row['kernel_us']:.1f} us of kernels", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with mnist/ and fsdd/ (as ../shared/data)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kinds", default="late,progressive,early", help="fusion kinds of the inference rows")
    parser.add_argument("--train-modes", default="graph,compile_graph", help="graphed training modes")
    parser.add_argument("--compiled", action="store_true",
                        help="also the graph of the torch.compile'd forward, fp32 and bf16 (inference rows)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_breakdown.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    train, test, spec = load_data(args.data.resolve(), tiny=False)
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "inference": [], "training": []}
    single = to_device(take_batch(test, 1), device)
    for kind in filter(None, args.kinds.split(",")):
        report["inference"] += inference_rows(kind, spec, single, device, args.compiled)
    train_dev = to_device(train, device)
    for mode in filter(None, args.train_modes.split(",")):
        report["training"].append(train_row(mode, spec, train_dev, device))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_breakdown.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
