"""GPU latency, throughput and training-step suite on MNIST + FSDD (speaker theo unseen), one process, one card.

Inference, per fusion kind (a model trained here for --epochs with the graphed training step): batch-1 p50 (the
median of --rounds rounds, interleaved across the kind's variants) / p95 of fp32 eager, bf16 (weights cast
once, `bf16_copy`) and bf16 autocast eager, the CUDA-graph replay of each (fusion/inference/cuda_graph.py), also
with 4-D weights channels-last (`_cl`), and, with --compile, the graph of the torch.compile'd fp32 and bf16
forward (batch 1 only: one compilation per batch size); throughput at --throughput-batch; test accuracy of every
variant and its agreement with fp32 eager (same predictions; max |logit difference|).

Training, default progressive recipe, batch 64, the batches already on the GPU, the same initial weights and
batch order for every mode: the former eager loop (boolean-indexed loss, `bool()` checks, default AdamW), the
sync-free eager step (fusion/tasks/train_step.py), the whole step as one CUDA graph and that graph around the
compiled forward and loss (--train-modes; default before,eager,graph,compile_graph): samples/s, and from torch.profiler kernel launches, host synchronisations and copies per step and
the GPU busy fraction (union of kernel time / wall time), then test accuracy after the same epochs.

    python benchmarks/latency/gpu_suite.py --data ../shared/data --out /tmp/gpu_suite
    python benchmarks/latency/gpu_suite.py --data ../shared/data --out /tmp/cpu_check --device cpu --tiny

Writes OUT/gpu_suite.json and OUT/gpu_suite.md. Needs torch, torchvision, torchaudio, lightning, hydra, numpy,
Pillow and the repository (the data are decoded here, without the project's audio library); no network.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fusion.data.batches import slice_batch, take_batch, to_device  # noqa: E402
from fusion.eval.latency import measure_latency, measure_throughput, synchronize  # noqa: E402
from fusion.tasks.classify import classification_loss  # noqa: E402
from fusion.tasks.train_step import TrainStep, make_adamw  # noqa: E402

KINDS = ("early", "late", "progressive", "xattn")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------- data


def _image(path: Path) -> torch.Tensor:
    """PNG -> (1, 32, 32), bilinear resize, normalised with mean 0.5 / std 0.5 (the built-in image tower's input)."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy((pixels - 0.5) / 0.5)[None]


def _audio(path: Path, rate: int = 8000, samples: int = 8000) -> torch.Tensor:
    """16-bit PCM WAV -> (samples,) float32 at `rate`: centre-cropped or right-padded, as fusion.data.media does."""
    import wave

    with wave.open(str(path)) as handle:
        if handle.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM")
        frames = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        frames = frames.reshape(-1, handle.getnchannels()).mean(axis=1)
        source_rate = handle.getframerate()
    signal = torch.from_numpy(np.ascontiguousarray(frames))
    if source_rate != rate:
        import torchaudio.functional as AF

        signal = AF.resample(signal, source_rate, rate)
    if signal.numel() >= samples:
        start = (signal.numel() - samples) // 2
        return signal[start : start + samples]
    return F.pad(signal, (0, samples - signal.numel()))


def load_data(data: Path, tiny: bool, seed: int = 0) -> tuple[dict, dict, dict]:
    """(train, test) batch dicts on the CPU and the data spec: every FSDD recording paired with 2 MNIST images of
    its digit (1 with --tiny) from disjoint train / test image pools, speaker theo held out for test (the
    pair_digits builder's protocol). Decoded here with PIL and the standard library's wave module, so the suite
    needs no audio library beyond torch's."""
    import csv
    import random
    import re
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    labels_csv = data / "mnist" / "labels.csv"
    recordings = data / "fsdd" / "recordings"
    if not labels_csv.is_file() or not recordings.is_dir():
        raise SystemExit(f"--data {data}: needs mnist/labels.csv and fsdd/recordings/ (as ../shared/data)")
    by_label: dict[str, list[Path]] = {}
    with open(labels_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            by_label.setdefault(row["label"].strip(), []).append(data / "mnist" / row["file"])
    rng = random.Random(seed)
    pools = {}
    for label, paths in sorted(by_label.items()):
        paths = sorted(paths)
        rng.shuffle(paths)
        cut = len(paths) // 4
        pools[("test", label)], pools[("train", label)] = paths[:cut], paths[cut:]
    pattern = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
    rows = {"train": [], "test": []}
    per_recording = 1 if tiny else 2
    for path in sorted(recordings.iterdir()):
        match = pattern.match(path.name)
        if match is None:
            continue
        split = "test" if match.group(2) == "theo" else "train"
        for image in rng.sample(pools[(split, match.group(1))], per_recording):
            rows[split].append((image, path, int(match.group(1))))
    if tiny:
        rows = {split: items[:: max(1, len(items) // 150)] for split, items in rows.items()}
    decoded = {}
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for split, items in rows.items():
            images = list(pool.map(_image, [i for i, _, _ in items]))
            audio = list(pool.map(_audio, sorted({a for _, a, _ in items})))
            by_path = dict(zip(sorted({a for _, a, _ in items}), audio, strict=True))
            n = len(items)
            decoded[split] = {"image": torch.stack(images), "audio": torch.stack([by_path[a] for _, a, _ in items]),
                              "mask": {"image": torch.ones(n, dtype=torch.bool), "audio": torch.ones(n, dtype=torch.bool)},
                              "label": torch.tensor([y for _, _, y in items], dtype=torch.long)}
    log(f"decoded {len(rows['train'])} train / {len(rows['test'])} test rows in {time.perf_counter() - start:.1f} s")
    spec = {"modalities": ["audio", "image"], "num_classes": 10, "classes": [str(d) for d in range(10)]}
    return decoded["train"], decoded["test"], spec


def build_model(kind: str, spec: dict, seed: int) -> tuple[torch.nn.Module, dict]:
    """The recipe's FusionModel (fresh weights from `seed`) and the task's hyper-parameters."""
    from hydra.utils import instantiate

    from fusion.commands.app import compose_config

    cfg = compose_config("config", [f"recipe={kind}"])
    torch.manual_seed(seed)
    task = instantiate(cfg.model, data_spec=spec, _recursive_=False, _convert_="all")
    return task.model, dict(task.hparams)


# ------------------------------------------------------------------------------------------------- training


def legacy_loss(result, batch: dict, smoothing: float, unimodal_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The classification loss as the task computed it before: `bool()` per modality and boolean indexing
    (each a host synchronisation)."""
    labels = batch["label"]
    loss = F.cross_entropy(result.logits, labels, label_smoothing=smoothing)
    terms = []
    for m, logits in result.unimodal_logits.items():
        present = result.mask[m]
        if bool(present.any()):
            terms.append(F.cross_entropy(logits[present], labels[present], label_smoothing=smoothing))
    total = loss + result.aux_loss
    if terms and unimodal_weight:
        total = total + unimodal_weight * torch.stack(terms).mean()
    return total, loss


class LegacyStep:
    """The plain loop before: forward, loss, backward, default AdamW (loss and accuracy summed on the device)."""

    def __init__(self, model, hparams: dict, device: torch.device):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])
        self.loss = partial(legacy_loss, smoothing=hparams["label_smoothing"],
                            unimodal_weight=hparams["unimodal_loss_weight"])
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def step(self, batch: dict) -> None:
        self.model.train()
        self.optimizer.zero_grad()
        result = self.model.forward_with_details(batch)
        total, loss = self.loss(result, batch)
        total.backward()
        self.optimizer.step()
        n = batch["label"].shape[0]
        self.sums += torch.stack([loss.detach().double() * n, (result.logits.argmax(1) == batch["label"]).sum().double(),
                                  torch.full((), n, dtype=torch.float64, device=self.sums.device)])


def sync_free_step(model, hparams: dict, mode: str, device: torch.device) -> TrainStep:
    """The task's sync-free step (fusion/tasks/train_step.py) in `mode`: fused AdamW and the classification loss
    with the task's label smoothing, unimodal loss weight and gate supervision."""
    optimizer = make_adamw(model.parameters(), hparams["lr"], hparams["weight_decay"], device)

    def loss_fn(result, batch):
        return classification_loss(result, batch["label"], result.mask, hparams["label_smoothing"],
                                   hparams["unimodal_loss_weight"], hparams.get("gate_supervision_weight", 0.0))

    return TrainStep(model, optimizer, loss_fn, mode=mode)


def schedule(optimizer, total_steps: int, warmup_steps: int):
    """The task's schedule: linear warm-up, then cosine decay, stepped per optimizer step."""
    warmup = max(1, min(total_steps - 1, warmup_steps))
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer, [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.05, total_iters=warmup),
                    torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))],
        milestones=[warmup])


def epoch_batches(train: dict, batch_size: int, epoch: int, seed: int) -> list[dict]:
    """Shuffled full batches (the last partial one dropped, as every mode sees the same steps)."""
    n = int(train["label"].shape[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch), device="cpu")
    def pick(value):
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        return value[order.to(value.device)]

    shuffled = pick(train)
    return [slice_batch(shuffled, i, i + batch_size) for i in range(0, n - batch_size + 1, batch_size)]


def profile_steps(step_fn, batches: list[dict], device: torch.device) -> dict:
    """Kernel launches, host syncs / copies per step and the GPU busy fraction over `batches` (profiler)."""
    if device.type != "cuda" or not batches:
        return {"note": "profiler counts are taken on CUDA only"} if device.type != "cuda" else {}
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for batch in batches:
            step_fn(batch)
        synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    launches = syncs = copies = graph_launches = 0
    intervals = []
    kernels = 0
    for event in prof.events():
        name = event.name
        if event.device_type == DeviceType.CUDA:
            if not name.startswith(("Memcpy", "Memset")):
                kernels += 1
            intervals.append((event.time_range.start, event.time_range.end))
            continue
        if name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"):
            launches += 1
        elif name == "cudaGraphLaunch":
            graph_launches += 1
        elif name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            syncs += 1
        elif name in ("cudaMemcpy", "cudaMemcpyAsync"):
            copies += 1
    busy, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        busy += b - max(a, end)
        end = b
    steps = len(batches)
    return {"steps": steps, "kernel_launch_calls_per_step": launches / steps,
            "graph_launches_per_step": graph_launches / steps, "gpu_kernels_per_step": kernels / steps,
            "host_syncs_per_step": max(0, syncs - 1) / steps,  # minus the one closing the profiled region
            "memcpy_calls_per_step": copies / steps, "gpu_busy_fraction": busy / wall_us,
            "gpu_busy_ms_per_step": busy / steps / 1000, "wall_ms_per_step": wall_us / steps / 1000}


@torch.no_grad()
def evaluate(model, test: dict, device: torch.device, batch_size: int = 1024) -> float:
    model.eval()
    correct = 0
    n = int(test["label"].shape[0])
    for i in range(0, n, batch_size):
        batch = to_device(slice_batch(test, i, i + batch_size), device)
        correct += int((model(batch).argmax(1) == batch["label"]).sum())
    return correct / n


def train_mode(mode: str, init_model, hparams: dict, train: dict, test: dict, device: torch.device, epochs: int,
               batch_size: int, seed: int, profile_n: int) -> tuple[dict, torch.nn.Module]:
    """Trains a copy of `init_model` for `epochs` in `mode`; throughput over the steps after the first epoch's
    warm-up, a profile of `profile_n` steps, test accuracy."""
    model = copy.deepcopy(init_model).to(device)
    train_dev = to_device(train, device)
    steps_per_epoch = int(train["label"].shape[0]) // batch_size
    total = steps_per_epoch * epochs
    torch.manual_seed(seed)
    if mode == "before":
        runner = LegacyStep(model, hparams, device)
        optimizer = runner.optimizer
    else:
        runner = sync_free_step(model, hparams, mode, device)
        optimizer = runner.optimizer
    sched = schedule(optimizer, total, int(hparams["warmup_epochs"] * steps_per_epoch))

    def one(batch):
        runner.step(batch)
        sched.step()

    timed_steps, timed_s, first_epoch_s = 0, 0.0, None
    for epoch in range(epochs):
        batches = epoch_batches(train_dev, batch_size, epoch, seed)
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            one(batch)
        synchronize(device)
        seconds = time.perf_counter() - start
        if epoch == 0:
            first_epoch_s = seconds
        else:
            timed_steps, timed_s = timed_steps + len(batches), timed_s + seconds
    if timed_steps == 0:  # one epoch only: time it, warm-up and capture included
        timed_steps, timed_s = steps_per_epoch, first_epoch_s
    # the profile: more steps on the trained weights (continuing the run; the accuracy below is read before)
    acc = evaluate(model, test, device)
    try:
        profile = profile_steps(one, epoch_batches(train_dev, batch_size, epochs, seed)[:profile_n], device)
    except Exception as err:  # noqa: BLE001 - the timing and accuracy above still stand
        traceback.print_exc()
        profile = {"profile_error": f"{type(err).__name__}: {err}"}
    row = {"mode": mode, "epochs": epochs, "batch_size": batch_size, "steps": total,
           "samples_per_s": timed_steps * batch_size / timed_s, "ms_per_step": 1000 * timed_s / timed_steps,
           "first_epoch_s": first_epoch_s, "test_acc": acc, **profile}
    log(f"  train {mode}: {row['samples_per_s']:.0f} samples/s ({row['ms_per_step']:.2f} ms/step), test acc "
        f"{100 * acc:.2f} %, busy {row.get('gpu_busy_fraction', float('nan')):.2f}, launches/step "
        f"{row.get('kernel_launch_calls_per_step', float('nan')):.0f}, syncs/step {row.get('host_syncs_per_step', float('nan')):.1f}")
    return row, model


# ------------------------------------------------------------------------------------------------ inference


def variants_for(model, device: torch.device, compile_: bool) -> dict:
    """name -> batch -> logits (float32)."""
    from fusion.inference.cuda_graph import GraphedModel, bf16_copy

    model = model.eval()
    half = bf16_copy(model).eval()

    def eager(batch):
        with torch.inference_mode():
            return model(batch)

    def autocast(batch):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            return model(batch).float()

    def bf16(batch):
        with torch.inference_mode():
            return half(batch).float()

    out = {"fp32": eager, "bf16": bf16, "bf16_autocast": autocast}
    if device.type == "cuda":
        # `_cl`: 4-D weights in channels-last (NHWC) order, the layout of cuDNN's tensor-core convolutions
        nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        half_nhwc = copy.deepcopy(half).to(memory_format=torch.channels_last)
        out["graph_fp32"] = GraphedModel(model)
        out["graph_bf16"] = GraphedModel(half)
        out["graph_bf16_autocast"] = GraphedModel(model, autocast_dtype=torch.bfloat16)
        out["graph_fp32_cl"] = GraphedModel(nhwc)
        out["graph_bf16_cl"] = GraphedModel(half_nhwc)
        if compile_:
            out["compile_graph_fp32"] = GraphedModel(model, compile=True)
            out["compile_graph_bf16"] = GraphedModel(half, compile=True)
            out["compile_graph_fp32_cl"] = GraphedModel(nhwc, compile=True)
            out["compile_graph_bf16_cl"] = GraphedModel(half_nhwc, compile=True)
    return out


def predict_all(fn, test: dict, device: torch.device, batch_size: int) -> torch.Tensor:
    parts = []
    n = int(test["label"].shape[0])
    for i in range(0, n, batch_size):
        parts.append(fn(to_device(slice_batch(test, i, i + batch_size), device)).float().cpu())
    return torch.cat(parts)


def inference_rows(kind: str, model, test: dict, device: torch.device, args, deadline: float, compiled: bool,
                   reference: torch.Tensor | None) -> tuple[list[dict], torch.Tensor | None]:
    """Rows of the eager and graph variants (``compiled=False``) or of the compiled ones (batch 1 only: one
    compilation per batch size), and the fp32 eager logits of the test split (the reference)."""
    rows, measured = [], {}
    single = to_device(take_batch(test, 1), device)
    big = to_device(take_batch(test, args.throughput_batch), device)
    for name, fn in variants_for(model, device, args.compile).items():
        if name.startswith("compile") != compiled:
            continue
        if compiled and time.perf_counter() > deadline:
            log(f"  {kind}/{name}: skipped (time budget)")
            rows.append({"kind": kind, "variant": name, "skipped": "time budget"})
            continue
        if compiled:  # a fresh Dynamo cache: past its recompile limit (8 per function) it would silently run eager
            torch._dynamo.reset()
        try:
            row, reference = measure_variant(kind, name, fn, test, single, big, device, args, compiled, reference)
            measured[name] = (fn, row)
        except Exception as err:  # noqa: BLE001 - one failing variant must not cost the other rows
            traceback.print_exc()
            row = {"kind": kind, "variant": name, "error": f"{type(err).__name__}: {err}"}
            log(f"  {kind}/{name}: FAILED {row['error']}")
        rows.append(row)
    interleaved_latency(kind, measured, single, device, args)
    return rows, reference


def interleaved_latency(kind: str, measured: dict, single: dict, device: torch.device, args) -> None:
    """Times every variant of a kind again in `--rounds` - 1 further rounds, in alternating order, and sets each
    row's p50 to the median of its rounds' p50s: variants compared side by side, not one after the other on a
    machine whose speed drifts."""
    for round_ in range(1, args.rounds):
        names = list(measured) if round_ % 2 == 0 else list(reversed(measured))
        for name in names:
            fn, row = measured[name]
            lat = measure_latency(lambda f=fn: f(single), device, warmup=args.warmup, iters=args.iters)
            row["p50_rounds_ms"].append(lat.p50_ms)
    for name, (_, row) in measured.items():
        row["p50_ms"] = statistics.median(row["p50_rounds_ms"])
        log(f"  {kind}/{name}: p50 {row['p50_ms']:.3f} ms (rounds {[f'{v:.3f}' for v in row['p50_rounds_ms']]})")


def measure_variant(kind: str, name: str, fn, test: dict, single: dict, big: dict, device: torch.device, args,
                    compiled: bool, reference: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """One inference row: accuracy and agreement on the test split, batch-1 latency, throughput."""
    start = time.perf_counter()
    logits = predict_all(fn, test, device, 1 if compiled else args.throughput_batch)
    if reference is None:
        reference = logits
    labels = test["label"]
    lat = measure_latency(lambda f=fn: f(single), device, warmup=args.warmup, iters=args.iters)
    thr = float("nan") if compiled else measure_throughput(lambda f=fn: f(big), args.throughput_batch, device,
                                                            warmup=2, iters=args.throughput_iters)
    row = {"kind": kind, "variant": name, "acc": float((logits.argmax(1) == labels).float().mean()),
           "same_predictions_as_fp32": float((logits.argmax(1) == reference.argmax(1)).float().mean()),
           "max_abs_logit_diff": float((logits - reference).abs().max()),
           "p50_ms": lat.p50_ms, "p50_rounds_ms": [lat.p50_ms], "p95_ms": lat.p95_ms, "p99_ms": lat.p99_ms,
           "min_ms": lat.min_ms,
           f"throughput_bs{args.throughput_batch}": thr, "setup_and_eval_s": time.perf_counter() - start}
    log(f"  {kind}/{name}: acc {100 * row['acc']:.2f} %, agree {100 * row['same_predictions_as_fp32']:.2f} %, "
        f"max diff {row['max_abs_logit_diff']:.2e}, p50 {lat.p50_ms:.3f} ms, {thr:.0f} samples/s at "
        f"{args.throughput_batch}")
    return row, reference


# -------------------------------------------------------------------------------------------------- report


def paired_ratio(row: dict, twin: dict) -> float:
    """Median over the interleaved rounds of row's p50 / twin's p50 in the same round: two variants compared side
    by side, so a drift of the machine's speed between rounds cancels."""
    return statistics.median(a / b for a, b in zip(row["p50_rounds_ms"], twin["p50_rounds_ms"], strict=True))


def acceptance(report: dict, args) -> list[dict]:
    checks = []
    rows = [r for r in report["inference"] if "p50_ms" in r]
    for kind in {r["kind"] for r in rows}:
        mine = {r["variant"]: r for r in rows if r["kind"] == kind}
        fastest = min(mine.values(), key=lambda r: r["p50_ms"])
        checks.append({"check": f"{kind}: batch-1 p50 <= 0.5 ms", "value": f"{fastest['p50_ms']:.3f} ms ({fastest['variant']})",
                       "met": fastest["p50_ms"] <= 0.5})
        for name in sorted(mine):
            twin = name.replace("bf16", "fp32")
            if "bf16" in name and twin in mine:
                a, b = mine[name]["p50_ms"], mine[twin]["p50_ms"]
                checks.append({"check": f"{kind}: {name} <= {twin}", "value": f"{a:.3f} vs {b:.3f} ms", "met": a <= b})
                ratio = paired_ratio(mine[name], mine[twin])
                checks.append({"check": f"{kind}: {name} / {twin} <= 1, median over rounds of the ratio within a round",
                               "value": f"{ratio:.3f}", "met": ratio <= 1.0})
        halves = [r for r in mine.values() if "bf16" in r["variant"]]
        fulls = [r for r in mine.values() if "fp32" in r["variant"]]
        if halves and fulls:
            a, b = min(halves, key=lambda r: r["p50_ms"]), min(fulls, key=lambda r: r["p50_ms"])
            checks.append({"check": f"{kind}: fastest bf16 <= fastest fp32",
                           "value": f"{a['p50_ms']:.3f} ({a['variant']}) vs {b['p50_ms']:.3f} ms ({b['variant']})",
                           "met": a["p50_ms"] <= b["p50_ms"]})
        for r in mine.values():
            tol = 0.995 if "bf16" in r["variant"] else 1.0
            checks.append({"check": f"{kind}/{r['variant']}: same predictions as fp32 eager (>= {100 * tol:.1f} % of rows)",
                           "value": f"{100 * r['same_predictions_as_fp32']:.2f} %, max |diff| {r['max_abs_logit_diff']:.2e}",
                           "met": r["same_predictions_as_fp32"] >= tol})
    train = {r["mode"]: r for r in report["training"] if "error" not in r}
    graphed = [train[m] for m in ("graph", "compile_graph") if m in train]
    if "before" in train and graphed:
        before, after = train["before"], max(graphed, key=lambda r: r["samples_per_s"])
        checks.append({"check": f"training: GPU busy >= 70 % of a step ({after['mode']})",
                       "value": f"{after.get('gpu_busy_fraction', float('nan')):.2f}",
                       "met": after.get("gpu_busy_fraction", 0) >= 0.7})
        checks.append({"check": "training: >= 10x samples/s of the loop before",
                       "value": f"{after['samples_per_s']:.0f} vs {before['samples_per_s']:.0f} "
                                f"({after['samples_per_s'] / before['samples_per_s']:.1f}x)",
                       "met": after["samples_per_s"] >= 10 * before["samples_per_s"]})
        checks.append({"check": "training: same test accuracy after the same epochs (within 1 point)",
                       "value": f"{100 * after['test_acc']:.2f} vs {100 * before['test_acc']:.2f} %",
                       "met": after["test_acc"] >= before["test_acc"] - 0.01})
    return checks


def markdown(report: dict) -> str:
    bs = report["settings"]["throughput_batch"]
    lines = [f"# GPU suite ({report['machine'].get('gpu', report['machine']['device'])})", "",
             "| kind | variant | acc | same pred. as fp32 | max abs logit diff | p50 / p95 ms | speed-up over fp32 eager | "
             f"samples/s at {bs} |", "|---|---|---|---|---|---|---|---|"]
    base = {r["kind"]: r["p50_ms"] for r in report["inference"] if r.get("variant") == "fp32" and "p50_ms" in r}
    for r in report["inference"]:
        if "p50_ms" not in r:
            lines.append(f"| {r['kind']} | {r['variant']} | {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        lines.append(f"| {r['kind']} | {r['variant']} | {100 * r['acc']:.2f} % | {100 * r['same_predictions_as_fp32']:.2f} % | "
                     f"{r['max_abs_logit_diff']:.1e} | {r['p50_ms']:.3f} / {r['p95_ms']:.3f} | "
                     f"{base.get(r['kind'], float('nan')) / r['p50_ms']:.1f}x | {r[f'throughput_bs{bs}']:.0f} |".replace("| nan |", "| n/a |"))
    lines += ["", "| training mode | samples/s | ms/step | GPU busy | kernel launches/step | graph launches/step | "
              "GPU kernels/step | host syncs/step | memcpy calls/step | test acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error']} | | | | | | | | |")
            continue
        g = lambda k, f="{:.1f}", r=r: f.format(r[k]) if k in r else "n/a"  # noqa: E731
        lines.append(f"| {r['mode']} | {r['samples_per_s']:.0f} | {r['ms_per_step']:.2f} | {g('gpu_busy_fraction', '{:.2f}')} | "
                     f"{g('kernel_launch_calls_per_step')} | {g('graph_launches_per_step')} | {g('gpu_kernels_per_step')} | "
                     f"{g('host_syncs_per_step')} | {g('memcpy_calls_per_step')} | {100 * r['test_acc']:.2f} % |")
    lines += ["", "| acceptance check | value | met |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {'yes' if c['met'] else 'no'} |" for c in report["acceptance"]]
    return "\n".join(lines) + "\n"


def save(report: dict, out: Path) -> None:
    """Writes what is measured so far (a later failure keeps the earlier rows)."""
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with mnist/ and fsdd/ (as ../shared/data)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check that the code runs)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="fusion kinds, comma-separated")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of every model and training mode")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--train-modes", default="before,eager,graph,compile_graph",
                        help="before, eager, compile, graph, compile_graph")
    parser.add_argument("--profile-steps", type=int, default=20, help="training steps under the profiler")
    parser.add_argument("--iters", type=int, default=500, help="timed batch-1 calls per variant")
    parser.add_argument("--warmup", type=int, default=30, help="untimed batch-1 calls per variant")
    parser.add_argument("--rounds", type=int, default=3,
                        help="batch-1 timing rounds per variant, interleaved across a kind's variants (p50: median)")
    parser.add_argument("--throughput-batch", type=int, default=1024, help="batch size of the throughput column")
    parser.add_argument("--throughput-iters", type=int, default=20, help="timed calls at that batch size")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also the CUDA graph of the torch.compile'd forward (about 1 min per model and dtype)")
    parser.add_argument("--budget-s", type=float, default=330,
                        help="seconds from the start after which no further compile variant is started")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a few rows, 1 epoch, few iterations: a smoke run")
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (use --device cpu for a smoke run)")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; choose from {list(KINDS)}")
    modes = [m.strip() for m in args.train_modes.split(",") if m.strip()]
    if args.tiny:
        args.epochs, args.iters, args.warmup, args.throughput_iters, args.profile_steps = 1, 10, 3, 2, 3
        args.throughput_batch = min(args.throughput_batch, 64)
    if device.type != "cuda":
        modes = [m for m in modes if "graph" not in m]
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FUSION_HOME", str(args.out / "fusion_home"))
    torch.backends.cudnn.benchmark = True
    machine = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
               "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    log(f"machine {machine}")

    train, test, spec = load_data(args.data.resolve(), args.tiny, args.seed)
    report = {"machine": machine, "settings": vars(args) | {"data": str(args.data), "out": str(args.out)},
              "training": [], "models": [], "inference": []}
    trained, progressive_mode = {}, None
    if "progressive" in kinds or modes:
        init, hparams = build_model("progressive", spec, args.seed)
        log(f"training comparison, progressive, batch {args.batch_size}, {args.epochs} epochs: {modes}")
        for mode in modes:
            try:
                row, model = train_mode(mode, init, hparams, train, test, device, args.epochs, args.batch_size,
                                        args.seed, args.profile_steps)
            except Exception as err:  # noqa: BLE001 - the other modes and the inference rows still run
                traceback.print_exc()
                row, model = {"mode": mode, "error": f"{type(err).__name__}: {err}"}, None
                log(f"  train {mode}: FAILED {row['error']}")
            report["training"].append(row)
            if model is not None and mode in ("graph", "eager") and progressive_mode != "graph":
                trained["progressive"], progressive_mode = model, mode  # graph's model if it trained, else eager's
            save(report, args.out)
    references = {}
    for kind in kinds:
        if kind not in trained:
            init, hparams = build_model(kind, spec, args.seed)
            for mode in (("graph", "eager") if device.type == "cuda" else ("eager",)):
                try:
                    row, trained[kind] = train_mode(mode, init, hparams, train, test, device, args.epochs,
                                                    args.batch_size, args.seed, 0 if device.type != "cuda" else 3)
                    break
                except Exception as err:  # noqa: BLE001 - fall back to the eager step
                    traceback.print_exc()
                    row = {"mode": mode, "error": f"{type(err).__name__}: {err}"}
            row["kind"] = kind
            report["models"].append(row)
        log(f"inference {kind}")
        rows, references[kind] = inference_rows(kind, trained[kind], test, device, args, deadline, False, None)
        report["inference"] += rows
        save(report, args.out)
    if args.compile and device.type == "cuda":  # last: the budget cuts these first
        for kind in sorted(kinds, key=lambda k: k != "progressive"):
            log(f"inference {kind}, compiled")
            report["inference"] += inference_rows(kind, trained[kind], test, device, args, deadline, True,
                                                  references[kind])[0]
    report["acceptance"] = acceptance(report, args)
    report["seconds"] = time.perf_counter() - started
    save(report, args.out)
    (args.out / "gpu_suite.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    log(f"done in {report['seconds']:.0f} s: {args.out / 'gpu_suite.json'}")


if __name__ == "__main__":
    main()
