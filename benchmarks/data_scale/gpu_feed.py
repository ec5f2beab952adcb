"""Is the data path the bottleneck on a GPU? Steady-state training samples/s of the progressive recipe with a
pretrained-size image tower (ResNet-50 shape at 224 px, random weights: nothing is downloaded), fed by the data
path (manifest -> validation -> DataLoader workers -> disk cache -> pinned, non-blocking copies) against the
same model fed from batches already on the GPU, with the GPU utilisation of each phase.

    python3 benchmarks/data_scale/gpu_feed.py --out /tmp/gpu_feed

Generates its own data (benchmarks/data_scale/generate.py: 256 x 256 RGB PNG digits, 1 s of 8 kHz audio and a
caption per row) under --root, then runs, each with a fresh model and the same seed:

  data_path_cold  the data path with an empty disk cache (decode, resize, write), first epoch
  data_path_warm  the same rows again, read from the disk cache
  gpu_resident    --resident-batches batches taken from the same loader, moved to the GPU once and cycled

Steady state: the wall time of batches `warmup .. warmup + steps` (CUDA synchronised at both ends).
GPU utilisation: one `nvidia-smi -lms 200` process, its samples of each steady window (mean and median),
or torch.cuda.utilization() where nvidia-smi is absent. Writes <out>/gpu_feed.json. About 3-5 minutes on one
H200 with 16 CPU cores (most of it generating the files); `--accelerator cpu` with tiny sizes checks the logic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))


class UtilisationSampler(threading.Thread):
    """(time, GPU utilisation %) every `every_ms`: one `nvidia-smi -lms` process for the whole run, read line by
    line (a process started before the DataLoader workers fork, so sampling does not stall while they do), or
    torch.cuda.utilization() polled where nvidia-smi is absent."""

    def __init__(self, device_uuid: str | None, every_ms: int = 200):
        super().__init__(daemon=True)
        self.uuid, self.every_ms = device_uuid, every_ms
        self.samples: list[tuple[float, float]] = []
        self.running = True
        self.source = "nvidia-smi" if shutil.which("nvidia-smi") and device_uuid else "torch.cuda.utilization"
        self.process = None
        if self.source == "nvidia-smi":
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                             "-i", self.uuid, "-lms", str(every_ms)],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def run(self) -> None:
        if self.process is not None:
            for line in self.process.stdout:
                if line.strip().replace(".", "", 1).isdigit():
                    self.samples.append((time.perf_counter(), float(line)))
            return
        import torch

        while self.running:
            try:
                self.samples.append((time.perf_counter(), float(torch.cuda.utilization())))
            except Exception:  # needs pynvml / amdsmi
                return
            time.sleep(self.every_ms / 1000)

    def stop(self) -> None:
        self.running = False
        if self.process is not None:
            self.process.terminate()

    def window(self, start: float, stop: float) -> dict:
        values = [v for t, v in self.samples if start <= t <= stop]
        if not values:
            return {"gpu_util_mean": None, "gpu_util_median": None, "gpu_util_samples": 0}
        return {"gpu_util_mean": round(statistics.fmean(values), 1), "gpu_util_median": statistics.median(values),
                "gpu_util_samples": len(values)}


class GpuBatches:
    """A fixed list of batches (already on the device), cycled for `length` steps: the feed with no data path."""

    def __init__(self, batches: list[dict], length: int):
        self.batches, self.length = batches, length

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.length))

    def __len__(self) -> int:
        return self.length


def fit_phase(name: str, cfg, datamodule, loader, args, sampler: UtilisationSampler | None) -> dict:
    """Fits a fresh task for `warmup + steps + 1` batches of `loader` (None = the data module's); the figures."""
    import lightning as L
    import torch

    from fusion.training import build_task

    L.seed_everything(0, verbose=False)
    task = build_task(cfg, datamodule)
    gpu = args.accelerator == "gpu"
    marks: dict[int, float] = {}
    start = time.perf_counter()

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            step = trainer.global_step
            if step in (0, args.warmup, args.warmup + args.steps):
                if gpu:
                    torch.cuda.synchronize()
                marks[step] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if "first" not in marks:
                if gpu:
                    torch.cuda.synchronize()
                marks["first"] = time.perf_counter()

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, max_epochs=-1,
                        max_steps=args.warmup + args.steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
                        precision=args.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Clock()])
    if loader is None:
        trainer.fit(task, datamodule=datamodule)
    else:
        trainer.fit(task, train_dataloaders=loader)
    seconds = marks[args.warmup + args.steps] - marks[args.warmup]
    result = {"phase": name, "steady_samples_per_s": round(args.steps * args.batch_size / seconds, 1),
              "steady_seconds": round(seconds, 2), "time_to_first_step_s": round(marks["first"] - start, 2)}
    if sampler is not None:
        result |= sampler.window(marks[args.warmup], marks[args.warmup + args.steps])
    if gpu:
        result["peak_gpu_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_feed.json")
    parser.add_argument("--root", type=Path, default=None, help="generated data and cache (default: a temp folder)")
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--image-size", type=int, default=256, help="pixels per side of the generated PNGs")
    parser.add_argument("--image-tower", default="tv:resnet50:none", help="model.encoders.image (builtin = the recipe's)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=80, help="timed steps (keep warmup + steps within one epoch)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--resident-batches", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=None, help="data.num_workers (default: from the CPUs)")
    parser.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32-true on CPU")
    parser.add_argument("--keep-data", action="store_true", help="keep --root's generated data and cache")
    args = parser.parse_args()
    args.precision = args.precision or ("bf16-mixed" if args.accelerator == "gpu" else "32-true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from generate import generate
    from hydra.utils import instantiate

    from fusion.commands.app import compose_config
    from fusion.data.batches import to_device

    if args.accelerator == "gpu" and not torch.cuda.is_available():
        sys.exit("--accelerator gpu, but CUDA is not available (use --accelerator cpu for a logic check)")
    root = args.root or Path(tempfile.mkdtemp(prefix="gpu_feed-"))
    args.out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    manifest = generate(args.rows, root / f"rows-{args.rows}-{args.image_size}px", image_size=args.image_size)
    generated_s = time.perf_counter() - begin
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    overrides = ["recipe=progressive", f"data.manifest={manifest}", f"data.batch_size={args.batch_size}",
                 f"data.cache_dir={cache}", "data.cache=disk", f"run_dir={root / 'run'}"]
    if args.image_tower != "builtin":
        overrides.append(f"model.encoders.image={args.image_tower}")
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    cfg = compose_config("config", overrides)
    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    validated_s = time.perf_counter() - start
    files = sum(len([m for m in r.media if m != "text"]) for d in datamodule.datasets.values() for r in d.rows)

    sampler = None
    if args.accelerator == "gpu":
        props = torch.cuda.get_device_properties(0)
        uuid = str(getattr(props, "uuid", "") or "")
        sampler = UtilisationSampler(f"GPU-{uuid}" if uuid and not uuid.startswith("GPU-") else uuid or None)
        sampler.start()
    phases = [fit_phase("data_path_cold", cfg, datamodule, None, args, sampler),
              fit_phase("data_path_warm", cfg, datamodule, None, args, sampler)]
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(to_device(batch, device))
        if len(batches) == args.resident_batches:
            break
    if args.accelerator == "gpu":
        torch.cuda.synchronize()
    phases.append(fit_phase("gpu_resident", cfg, datamodule, GpuBatches(batches, args.warmup + args.steps + 1),
                            args, sampler))
    if sampler is not None:
        sampler.stop()
    resident = phases[-1]["steady_samples_per_s"]
    loader = datamodule.train_dataloader()
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name() if args.accelerator == "gpu" else platform.processor() or "cpu",
        "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)), "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory, "rows": args.rows, "files": files, "image_size": args.image_size,
        "image_tower": args.image_tower, "image_input": list(batches[0]["image"].shape[1:]),
        "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps, "precision": args.precision,
        "generate_s": round(generated_s, 1), "validate_s": round(validated_s, 1),
        "validate_files_per_s": round(files / max(validated_s, 1e-9)),
        "utilisation_source": sampler.source if sampler else None,
        "phases": phases,
        "warm_vs_resident": round(phases[1]["steady_samples_per_s"] / resident, 3),
        "cold_vs_resident": round(phases[0]["steady_samples_per_s"] / resident, 3),
        "total_s": round(time.perf_counter() - begin, 1),
    }
    (args.out / "gpu_feed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("warm_vs_resident", "cold_vs_resident", "total_s")}))
    if not args.keep_data and args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
