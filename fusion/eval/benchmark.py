"""Accuracy-vs-cost evaluation of one classifier: one report row per (device, variant)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fusion.data.batches import concat_batches, take_batch, to_device
from fusion.eval.accuracy import classification_metrics, predict
from fusion.eval.cost import count_flops, count_parameters, peak_memory_bytes, tensor_bytes
from fusion.eval.latency import measure_latency, measure_throughput, print_now
from fusion.eval.variants import VARIANT_NAMES, build_variants


def _batch_bytes(batch: object) -> int:
    if isinstance(batch, dict):
        return sum(_batch_bytes(value) for value in batch.values())
    return batch.numel() * batch.element_size() if isinstance(batch, torch.Tensor) else 0


def machine_info(devices: Sequence[str]) -> dict[str, str]:
    """CPU model, core count, torch version and GPU names, for the report header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass

    info = {
        "cpu": cpu,
        "cpu_cores_visible": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):  # other processes competing for the CPU inflate CPU latencies
        info["load_average_1_5_15min"] = " ".join(f"{load:.1f}" for load in os.getloadavg())
    for device in devices:
        if torch.device(device).type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def evaluate_model(
    name: str,
    fusion: str,
    model: nn.Module,
    batches: Sequence[dict],
    num_classes: int,
    devices: Sequence[str] = ("cpu",),
    variants: Sequence[str] = VARIANT_NAMES,
    warmup: int = 10,
    iters: int = 100,
    throughput_batch_sizes: Sequence[int] = (64,),
    log: Callable[[str], None] = print_now,
) -> tuple[list[dict], dict[str, str]]:
    """Measures accuracy, latency, throughput, FLOPs, parameters and peak memory for every variant and device.

    Args:
        name: Row label of the model (e.g. the run's recipe name).
        fusion: Fusion kind (early/late/progressive/...).
        model: ``model(batch) -> (B, num_classes)`` logits, fp32 weights.
        batches: Test batches (CPU batch dicts with ``label``).
        num_classes: Number of classes for macro-F1.
        devices: ``cpu`` and/or ``cuda``.
        variants: Subset of ``VARIANT_NAMES``.
        warmup: Untimed calls before timing.
        iters: Timed calls at batch size 1.
        throughput_batch_sizes: Batch sizes for throughput.
        log: Progress printer.

    Returns:
        Report rows and ``{"<name>/<variant>@<device>": reason}`` for skipped variants.
    """
    model = model.eval()
    params = count_parameters(model)
    full = concat_batches(batches)
    with torch.inference_mode():  # the fp32 graph's count stands for every variant (same operators)
        flops = count_flops(lambda: model.cpu()(take_batch(full, 1)))
    rows, skipped = [], {}
    for device in devices:
        built, why_not = build_variants(model, device, variants)
        skipped.update({f"{name}/{variant}@{device}": why for variant, why in why_not.items()})
        single = to_device(take_batch(full, 1), device)
        for variant in built:
            log(f"  [{name}] {variant.name} on {device}: accuracy ...")
            predictions, labels = predict(variant, batches, device)
            metrics = classification_metrics(predictions, labels, num_classes)
            log(f"  [{name}] {variant.name} on {device}: acc {100 * metrics['acc']:.2f} %, "
                f"macro-F1 {100 * metrics['macro_f1']:.2f} %; timing batch 1 ...")
            latency = measure_latency(lambda v=variant, x=single: v(x), device, warmup=warmup, iters=iters)
            throughput = {}
            for size in throughput_batch_sizes:
                big = to_device(take_batch(full, size), device)
                throughput[str(size)] = measure_throughput(lambda v=variant, b=big: v(b), size, device,
                                                           warmup=max(1, warmup // 5), iters=max(3, iters // 10))
                del big
            if variant.eager or torch.device(device).type == "cuda":
                memory, method = peak_memory_bytes(lambda v=variant, x=single: v(x), device,
                                                   tensor_bytes(variant.model) + _batch_bytes(single))
            else:
                memory, method = None, "not measured (compiled graph on CPU)"
            row = {
                "model": name, "fusion": fusion, "variant": variant.name, "device": device,
                "acc": metrics["acc"], "macro_f1": metrics["macro_f1"], "num_test_samples": int(labels.numel()),
                "latency_p50_ms": latency.p50_ms, "latency_p95_ms": latency.p95_ms,
                "latency_p99_ms": latency.p99_ms, "latency": latency.to_dict(), "throughput": throughput,
                "params": params, "flops": flops, "peak_memory_bytes": memory, "memory_method": method,
            }
            rows.append(row)
            log(f"  [{name}] {variant.name} on {device}: p50 {latency.p50_ms:.3f} ms, p95 {latency.p95_ms:.3f} ms, "
                f"p99 {latency.p99_ms:.3f} ms; throughput "
                + ", ".join(f"bs {bs}: {sps:.0f}/s" for bs, sps in throughput.items()))
    return rows, skipped
