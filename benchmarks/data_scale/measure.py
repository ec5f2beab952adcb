"""Data path at scale: time to first training step, steady-state samples/s and peak memory of the progressive
recipe on generated manifests of several sizes, each configuration in its own process.

    python benchmarks/data_scale/measure.py --sizes 1000 10000 100000 --root /tmp/data_scale \
        --out benchmarks/data_scale/results/cpu.json
    python benchmarks/data_scale/measure.py --report benchmarks/data_scale/results/cpu.json ...

Variants (each a fresh process): `disk-cold` (data.cache=disk into an empty cache folder), `disk-warm` (the same
folder again), `none` (data.cache=none: decode every time), and with `--before <checkout>` the data path this
replaced (`before`: every file decoded serially into RAM before training, no workers) run from another checkout
of the repository. Time to first step: from building the data module (validation included; imports excluded)
to the end of the first optimizer step. Steady state: batches `warmup .. warmup + steps` (epoch ends included,
validation off), samples/s = steps x batch size / their wall time. Memory: peak RSS of the main process
(VmHWM) and peak PSS of the process tree (main process, validation and DataLoader workers; shared pages
counted once) and its peak USS (private pages only: unlike PSS, not lowered by other processes that map the same
libraries), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {  # name -> data overrides ({cache} = this size's cache folder)
    "disk-cold": ["data.cache=disk", "data.cache_dir={cache}"],
    "disk-warm": ["data.cache=disk", "data.cache_dir={cache}"],
    "none": ["data.cache=none"],
    "before": ["data.cache=true", "data.num_workers=0"],
}


def tree_pids(root: int) -> list[int]:
    """`root` and its descendants (from /proc/<pid>/task/<tid>/children)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return pids


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, USS) of a process in KiB: USS = its private pages, PSS adds its share of shared ones."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split(":")[0] in
                      ("Pss", "Private_Clean", "Private_Dirty")}
        return fields.get("Pss", 0), fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    except (OSError, ValueError, IndexError):
        return 0, 0


class MemorySampler(threading.Thread):
    """Peak PSS and peak USS (KiB) of this process and its descendants, sampled every `every_s`. PSS also
    depends on other processes mapping the same libraries (on a shared machine); USS does not."""

    def __init__(self, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.every_s, self.peak_pss, self.peak_uss, self.running = every_s, 0, 0, True

    def run(self) -> None:
        while self.running:
            sizes = [memory_kib(p) for p in tree_pids(os.getpid())]
            self.peak_pss = max(self.peak_pss, sum(s[0] for s in sizes))
            self.peak_uss = max(self.peak_uss, sum(s[1] for s in sizes))
            time.sleep(self.every_s)

    def stop(self) -> tuple[int, int]:
        self.running = False
        self.join()
        return self.peak_pss, self.peak_uss


def measure(manifest: str, overrides: list[str], steps: int, warmup: int, batch_size: int) -> dict:
    """Builds the data module and the progressive task, fits `warmup + steps` batches, returns the figures."""
    import lightning as L
    from hydra.utils import instantiate

    from fusion.commands.app import compose_config
    from fusion.training import build_task

    sampler = MemorySampler()
    sampler.start()
    cfg = compose_config("config", ["recipe=progressive", f"data.manifest={manifest}", f"data.batch_size={batch_size}",
                                    "run_dir=/tmp/data_scale/run", *overrides])
    L.seed_everything(0, verbose=False)
    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepared = time.perf_counter()
    task = build_task(cfg, datamodule)
    stamps: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            stamps.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if len(stamps) == 1:
                self.first_end = time.perf_counter()

    clock = Clock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, max_steps=warmup + steps + 1,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
    trainer.fit(task, datamodule=datamodule)
    steady = stamps[warmup + steps] - stamps[warmup]
    train_rows = len(datamodule.datasets["train"])
    pss, uss = sampler.stop()
    return {"rows": sum(len(d) for d in datamodule.datasets.values()), "train_rows": train_rows,
            "prepare_s": round(prepared - start, 2), "time_to_first_step_s": round(clock.first_end - start, 2),
            "steady_samples_per_s": round(steps * batch_size / steady, 1), "steady_steps": steps,
            "epochs_in_steady_state": round(steps * batch_size / train_rows, 2),
            "num_workers": trainer.train_dataloader.num_workers,
            "peak_rss_main_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_pss_tree_MiB": round(pss / 1024), "peak_uss_tree_MiB": round(uss / 1024)}


def run_one(manifest: Path, variant: str, cache: Path, args, repo: Path) -> dict:
    overrides = [o.format(cache=cache) for o in VARIANTS[variant]]
    command = [sys.executable, __file__, "--one", str(manifest), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--batch-size", str(args.batch_size), "--", *overrides]
    env = os.environ | {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=repo, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"{manifest} / {variant} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][7:])


def report(paths: list[Path]) -> str:
    """A markdown table of result files (one per round): each figure as its values over the rounds."""
    runs: dict[tuple[int, str], list[dict]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["results"]:
            runs.setdefault((row["size"], row["variant"]), []).append(row)
    lines = ["| rows | variant | time to first step (s) | steady samples/s | peak PSS, process tree (MiB) | "
             "peak USS, process tree (MiB) | peak RSS, main (MiB) |", "|---|---|---|---|---|---|---|"]
    for (size, variant), rows in sorted(runs.items()):
        cell = lambda key, rows=rows: " / ".join(f"{r[key]:g}" if key in r else "-" for r in rows)  # noqa: E731
        lines.append(f"| {size:,} | {variant} | {cell('time_to_first_step_s')} | {cell('steady_samples_per_s')} | "
                     f"{cell('peak_pss_tree_MiB')} | {cell('peak_uss_tree_MiB')} | {cell('peak_rss_main_MiB')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/data_scale"), help="manifests and caches go here")
    parser.add_argument("--variants", nargs="+", default=["disk-cold", "disk-warm", "none"], choices=list(VARIANTS))
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the replaced data path (variant 'before')")
    parser.add_argument("--before-sizes", type=int, nargs="*", default=None, help="sizes to run 'before' on (default: all)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", type=Path, nargs="+", default=None, help="tabulate result files (rounds)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one manifest
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.overrides, args.steps, args.warmup, args.batch_size)))
        return
    from generate import generate

    variants = args.variants + (["before"] if args.before else [])
    results = []
    for size in args.sizes:
        manifest = generate(size, args.root / f"rows-{size}")
        cache = args.root / f"cache-{size}"
        for variant in variants:
            if variant == "before" and args.before_sizes is not None and size not in args.before_sizes:
                continue
            if variant == "disk-cold":
                shutil.rmtree(cache, ignore_errors=True)
            row = {"size": size, "variant": variant} | run_one(manifest, variant, cache, args,
                                                                 args.before if variant == "before" else REPO)
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
