"""Runs named lists of plain Hydra overrides through `train.py` over several seeds, then tabulates the run folders.

Launch (every `--run NAME OVERRIDE...` is one row; each (row, seed) is one `train.py` process in
`OUT/NAME/seed<k>/`, up to `--jobs` at a time; a run whose folder has `metrics.json` is not run again):

    python benchmarks/sweep.py --out checkpoints/sweeps/fusion --jobs 2 --seeds 0 1 \
        --run early recipe=early --run late recipe=late --run progressive recipe=progressive

Summary only (also of a Hydra multirun folder, `python train.py -m recipe=early,late seed=0,1`, whose run
folders are grouped by their overrides without `seed`):

    python benchmarks/sweep.py --out checkpoints/sweeps/fusion --report
    python benchmarks/sweep.py --out checkpoints/multirun/<time> --report

`--common` overrides go to every run before the row's own. `--gpus G` spreads runs over G GPUs (round robin
through CUDA_VISIBLE_DEVICES); every run gets its own MASTER_PORT, so data-parallel CPU runs
(`trainer.strategy=ddp trainer.devices=2 trainer.accelerator=cpu`) can run side by side. The table
(`OUT/results.md`, `OUT/results.json`): per row the test accuracy of each seed, mean ± std, the difference to
`--baseline` paired by seed (mean ± std, worst), fit and process wall time, and for comm hooks the bytes per
compressed step and the compression (compressed steps, last logged step, whole run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*")


def free_port(taken: set[int], start: int = 29600) -> int:
    """The first port >= `start` not handed out yet and not bound on this host."""
    port = start
    while True:
        if port not in taken:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                    taken.add(port)
                    return port
                except OSError:
                    pass
        port += 1


def prepare_builtin_data(overrides: list[str]) -> None:
    """Generates the built-in set once, before any run, so concurrent runs only read it."""
    from omegaconf import OmegaConf

    from fusion.data.builtin_digits import ensure_builtin_digits

    sizes = list(OmegaConf.load(REPO / "recipes" / "data" / "manifest.yaml").builtin_size)
    for o in overrides:
        if o.startswith("data.builtin_size="):
            sizes = [int(x) for x in o.split("=", 1)[1].strip("[]").split(",")]
    print(f"built-in data: {ensure_builtin_digits(n_train=sizes[0], n_val=sizes[1], n_test=sizes[2])}", flush=True)


def launch(args: argparse.Namespace, rows: dict[str, list[str]]) -> None:
    """Runs every (row, seed) not finished yet, `args.jobs` at a time."""
    todo = [(name, seed) for seed in args.seeds for name in rows
            if args.force or not (args.out / name / f"seed{seed}" / "metrics.json").exists()]
    if any(not any(o.startswith("data.manifest=") for o in args.common + rows[name]) for name, _ in todo):
        prepare_builtin_data(args.common)
    print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               MASTER_ADDR="127.0.0.1", PYTHONUNBUFFERED="1")
    running: list[tuple[subprocess.Popen, Path, float]] = []
    ports: set[int] = set()
    slot = 0
    while todo or running:
        while todo and len(running) < args.jobs:
            name, seed = todo.pop(0)
            run_dir = (args.out / name / f"seed{seed}").resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "train.py", *args.common, *rows[name], f"seed={seed}", f"run_dir={run_dir}",
                       "trainer.enable_progress_bar=false"]
            run_env = dict(env, MASTER_PORT=str(free_port(ports)))
            if args.gpus:
                run_env["CUDA_VISIBLE_DEVICES"] = str(slot % args.gpus)
            slot += 1
            (run_dir / "command.txt").write_text(" ".join(command) + "\n")
            log = open(run_dir / "train.log", "w")  # noqa: SIM115 - closed when the process ends
            running.append((subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=run_env),
                            run_dir, time.perf_counter()))
        time.sleep(1.0)
        for entry in list(running):
            process, run_dir, start = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            wall = round(time.perf_counter() - start, 1)
            (run_dir / "sweep.json").write_text(json.dumps({"returncode": process.returncode, "wall_seconds": wall}))
            status = "ok" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see train.log)"
            print(f"{run_dir.relative_to(args.out.resolve())}: {status} in {wall:.0f} s", flush=True)


def label_and_seed(run_dir: Path, root: Path) -> tuple[str, int]:
    """`OUT/NAME/seed<k>` -> (NAME, k); a multirun folder `<n>-a=1,seed=2` -> ('a=1', seed from config.yaml)."""
    relative = run_dir.relative_to(root)
    match = re.fullmatch(r"seed(\d+)", relative.name)
    if match and len(relative.parts) > 1:
        return str(relative.parent), int(match.group(1))
    seed = 0
    config = run_dir / "config.yaml"
    if config.exists():
        found = re.search(r"^seed: (\d+)$", config.read_text(), re.MULTILINE)
        seed = int(found.group(1)) if found else 0
    name = re.sub(r"^\d+-", "", relative.name)
    name = ",".join(part for part in name.split(",") if not part.startswith("seed=")) or "default"
    return str(relative.parent / name) if len(relative.parts) > 1 else name, seed


def last_logged_compression(run_dir: Path) -> float | None:
    """Compression of the last logged optimizer step (after every warm-up), from the CSV log."""
    logs = sorted(run_dir.glob("logs/**/metrics.csv"))
    if not logs:
        return None
    with logs[0].open() as f:
        logged = [row for row in csv.DictReader(f) if row.get("comm/compression")]
    return float(logged[-1]["comm/compression"]) if logged else None


def collect(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        if any(part == "cross_fit" for part in path.relative_to(root).parts):
            continue  # the fold models of a cross-fitted run
        label, seed = label_and_seed(path.parent, root)
        metrics = json.loads(path.read_text())
        extra = path.parent / "sweep.json"
        if extra.exists():
            metrics["wall_seconds"] = json.loads(extra.read_text())["wall_seconds"]
        if "comm/compression" in metrics:
            metrics["comm/last_step_compression"] = last_logged_compression(path.parent)
        runs.append({"label": label, "seed": seed, "run_dir": str(path.parent), **metrics})
    return runs


def summarize(runs: list[dict], baseline: str | None) -> list[dict]:
    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else float("nan")

    acc = {(r["label"], r["seed"]): 100 * r["test/acc"] for r in runs if "test/acc" in r}
    rows = []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = sorted((r for r in runs if r["label"] == label and "test/acc" in r), key=lambda r: r["seed"])
        if not mine:
            continue
        accs = [100 * r["test/acc"] for r in mine]
        paired = [acc[(label, r["seed"])] - acc[(baseline, r["seed"])] for r in mine if (baseline, r["seed"]) in acc]
        row = {"label": label, "seeds": [r["seed"] for r in mine], "acc": accs, "acc_mean": statistics.mean(accs),
               "acc_std": spread(accs), "fit_seconds": statistics.median(r.get("fit_seconds", 0.0) for r in mine)}
        if paired:
            row |= {"paired_mean": statistics.mean(paired), "paired_std": spread(paired), "paired_worst": min(paired)}
        walls = [r["wall_seconds"] for r in mine if "wall_seconds" in r]
        if walls:
            row["wall_seconds"] = statistics.median(walls)
        if "comm/compression" in mine[0]:
            fp32 = mine[0]["comm/fp32_bytes_per_step"]
            sent = statistics.mean(r.get("comm/compressed_bytes_per_step", r["comm/bytes_per_step"]) for r in mine)
            last = [r["comm/last_step_compression"] for r in mine if r.get("comm/last_step_compression")]
            row |= {"bytes_per_compressed_step": sent, "compression": fp32 / sent if sent else float("nan"),
                    "compression_last_step": statistics.mean(last) if last else float("nan"),
                    "compression_whole_run": statistics.mean(r["comm/compression"] for r in mine)}
        rows.append(row)
    return rows


def markdown(rows: list[dict], baseline: str | None) -> str:
    comm = any("compression" in r for r in rows)
    head = ["row", "seeds", "test acc % per seed", "mean ± std"]
    head += [f"vs {baseline}, paired (mean ± std, worst)"] if baseline else []
    head += ["fit s (median)", "wall s (median)"]
    head += ["bytes/step (compressed steps)", "compression (compressed / last step / whole run)"] if comm else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], " ".join(map(str, r["seeds"])), " / ".join(f"{a:.2f}" for a in r["acc"]),
                 f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}"]
        if baseline:
            cells.append(f"{r['paired_mean']:+.2f} ± {r['paired_std']:.2f} ({r['paired_worst']:+.2f})"
                         if "paired_mean" in r else "")
        cells += [f"{r['fit_seconds']:.0f}", f"{r['wall_seconds']:.0f}" if "wall_seconds" in r else ""]
        if comm and "compression" in r:
            cells += [f"{r['bytes_per_compressed_step'] / 1e3:.1f} kB", f"{r['compression']:.1f}x / "
                      f"{r['compression_last_step']:.1f}x / {r['compression_whole_run']:.1f}x"]
        elif comm:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="sweep folder (run folders below it)")
    parser.add_argument("--run", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                        help="a row: its name, then its train.py overrides (repeat for every row)")
    parser.add_argument("--common", nargs="*", default=[], help="train.py overrides for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads per process")
    parser.add_argument("--gpus", type=int, default=0, help="spread runs over this many GPUs (0: leave them)")
    parser.add_argument("--force", action="store_true", help="run again even where metrics.json exists")
    parser.add_argument("--report", action="store_true", help="only tabulate the finished runs under --out")
    parser.add_argument("--baseline", default=None, help="row the paired differences are taken against")
    args = parser.parse_args()
    rows = {}
    for name, *overrides in args.run:
        if not NAME.fullmatch(name) or name in rows:
            raise SystemExit(f"--run {name!r}: names must be unique; letters, digits, '.', '_', '+', '-', '/'")
        rows[name] = overrides
    if not args.report:
        if not rows:
            raise SystemExit("give at least one --run NAME OVERRIDE... (or --report)")
        args.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        launch(args, rows)
        print(f"sweep wall time {time.perf_counter() - start:.0f} s", flush=True)
    runs = collect(args.out)
    summary = summarize(runs, args.baseline)
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    text = markdown(summary, args.baseline)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
