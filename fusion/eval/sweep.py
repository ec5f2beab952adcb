"""Accuracy-vs-latency evaluation of one or several run folders into one report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fusion.data.batches import concat_batches, slice_batch
from fusion.errors import ConfigError
from fusion.eval.benchmark import evaluate_model, machine_info
from fusion.eval.latency import fix_threads, print_now
from fusion.eval.report import write_report
from fusion.eval.robustness import (
    DEFAULT_CORRUPTIONS,
    DEFAULT_NOISE_LEVELS,
    add_effective_robustness,
    evaluate_robustness,
)
from fusion.eval.run_folder import (
    BATCH_CACHE_NAME,
    load_batch_cache,
    load_run,
    load_test_batches,
    save_batch_cache,
    test_data_config,
)
from fusion.eval.variants import VARIANT_NAMES


@dataclass
class EvalSettings:
    """What to evaluate and how (recipes/evaluate.yaml documents each field)."""

    run: list[str]
    out_dir: str | None = None
    devices: list[str] = field(default_factory=lambda: ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    variants: list[str] = field(default_factory=lambda: list(VARIANT_NAMES))
    threads: int | None = None
    warmup: int = 20
    iters: int = 200
    batch_sizes: list[int] = field(default_factory=lambda: [64, 256])
    robustness: bool = True
    noise_levels: list[float] = field(default_factory=lambda: list(DEFAULT_NOISE_LEVELS))
    corruptions: list[str] = field(default_factory=lambda: list(DEFAULT_CORRUPTIONS))
    max_test_samples: int | None = None
    data: dict = field(default_factory=dict)
    seed: int = 0
    cache_batches: bool = False
    from_cache: bool = False


def default_out_dir(settings: EvalSettings, first_run_dir: Path) -> Path:
    """The run folder for one run; ``checkpoints/eval/<time>`` next to the runs for a sweep."""
    if settings.out_dir:
        return Path(settings.out_dir)
    if len(settings.run) == 1:
        return first_run_dir
    return first_run_dir.parent.parent / "eval" / time.strftime("%Y%m%d-%H%M%S")


def _trim(batches: list[dict], max_samples: int | None) -> list[dict]:
    if max_samples is None:
        return batches
    full = concat_batches(batches)
    return [slice_batch(full, start, min(start + 64, max_samples)) for start in range(0, max_samples, 64)
            if start < int(full["label"].shape[0])]


def run_sweep(settings: EvalSettings, log: Callable[[str], None] = print_now) -> tuple[dict, dict[str, Path]]:
    """Evaluates every checkpoint of ``settings.run`` and writes report.md/report.json/pareto.png.

    Returns:
        The report dict and the written paths.
    """
    if not settings.run:
        raise ConfigError("run= is required: a run folder, a .ckpt file, or a list of them")
    for device in settings.devices:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device} requested but CUDA is not available")
    threads = fix_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rows, skipped, robustness, out_dir = [], {}, {}, None
    names_seen: dict[str, int] = {}
    for index, path in enumerate(settings.run):
        run = load_run(path)
        name = run.name if run.name not in names_seen else f"{run.name}-{names_seen[run.name] + 1}"
        names_seen[run.name] = names_seen.get(run.name, 0) + 1
        out_dir = out_dir or default_out_dir(settings, run.run_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        log(f"[{index + 1}/{len(settings.run)}] {name} ({run.fusion} fusion) from {run.checkpoint}"
            f" (epochs trained: {run.epochs_trained})")
        cache_path = run.run_dir / BATCH_CACHE_NAME
        if settings.from_cache:
            batches = load_batch_cache(cache_path, test_data_config(run, settings.data))
            log(f"  [{name}] test batches from {cache_path}")
        else:
            batches, _ = load_test_batches(run, settings.data, out_dir)
            if settings.cache_batches:
                save_batch_cache(batches, test_data_config(run, settings.data), cache_path)
                log(f"  [{name}] test batches saved to {cache_path}")
        batches = _trim(batches, settings.max_test_samples)
        log(f"  [{name}] {sum(int(b['label'].shape[0]) for b in batches)} test samples, "
            f"modalities {run.data_spec['modalities']}, {threads} CPU thread(s)")
        model_rows, model_skipped = evaluate_model(
            name, run.fusion, run.model, batches, num_classes=run.data_spec["num_classes"], devices=settings.devices,
            variants=settings.variants, warmup=settings.warmup, iters=settings.iters,
            throughput_batch_sizes=settings.batch_sizes, log=log)
        for row in model_rows:
            row["run_dir"] = str(run.run_dir)
            row["checkpoint"] = str(run.checkpoint)
            row["epochs_trained"] = run.epochs_trained
        rows += model_rows
        skipped.update(model_skipped)
        if settings.robustness:
            device = settings.devices[-1]
            log(f"  [{name}] robustness (fp32 on {device}) ...")
            robustness[name] = evaluate_robustness(run.model.to(device), batches, device, run.data_spec["num_classes"],
                                                   settings.noise_levels, seed=settings.seed, log=log,
                                                   corruptions=settings.corruptions)
            robustness[name]["fusion"] = run.fusion
    late = [name for name, result in robustness.items() if result["fusion"] == "late"]
    if late:
        add_effective_robustness(robustness, late[0])
    elif robustness:
        skipped["effective robustness"] = "needs a late-fusion run in the sweep as reference"
    report = {
        "machine": machine_info(settings.devices) | {"torch_threads": str(threads)},
        "settings": {key: value for key, value in asdict(settings).items() if key not in ("out_dir",)},
        "rows": rows, "robustness": robustness, "skipped": skipped,
    }
    paths = write_report(report, out_dir)
    log("report: " + "\n        ".join(str(path) for path in paths.values()))
    return report, paths
