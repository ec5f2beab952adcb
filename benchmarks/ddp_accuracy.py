"""Accuracy and wire bytes of each comm hook on a recipe, trained data-parallel (2 CPU processes by default).

Runs ``train.py`` once per hook with the same seed and data, then reads each run folder: test accuracy
(metrics.json), steady-state bytes per step and compression (``comm/*`` in the CSV log, last logged step),
and run totals (hook counters saved in last.ckpt). Writes ``results.json`` and ``results.md`` to ``--out``.

    python benchmarks/ddp_accuracy.py --out checkpoints/ddp_accuracy --hooks none int8 topk \
        --topk-args ratio=0.001 warmup_steps=10 -- trainer.max_epochs=6
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def hook_overrides(hook: str, args: list[str]) -> list[str]:
    if hook == "none":
        return ["comm_hook=none"]
    return [f"comm_hook={hook}"] + [f"+comm_hook_args.{a}" for a in args]


def read_run(run_dir: Path) -> dict:
    out = json.loads((run_dir / "metrics.json").read_text())
    log = run_dir / "logs" / "metrics.csv"
    rows = [r for r in csv.DictReader(log.open()) if r.get("comm/bytes_per_step")] if log.exists() else []
    if rows:
        out["steady/bytes_per_step"] = float(rows[-1]["comm/bytes_per_step"])
        out["steady/compression"] = float(rows[-1]["comm/compression"])
    checkpoint = torch.load(run_dir / "last.ckpt", weights_only=True, map_location="cpu")
    if "comm_hook" in checkpoint:
        counter = checkpoint["comm_hook"]["ranks"][0]["counter"]
        steps = max(counter["steps"], 1)
        out["run/bytes_per_step"] = counter["total_bytes"] / steps
        out["run/fp32_bytes_per_step"] = counter["total_fp32_bytes"] / steps
        out["run/compression"] = counter["total_fp32_bytes"] / max(counter["total_bytes"], 1e-9)
        out["run/steps"] = counter["steps"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="progressive")
    parser.add_argument("--hooks", nargs="+", default=["none", "int8", "topk"])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--int8-args", nargs="*", default=["granularity=block"])
    parser.add_argument("--topk-args", nargs="*", default=["ratio=0.001", "warmup_steps=10"])
    parser.add_argument("--powersgd-args", nargs="*", default=["rank=2", "warmup_steps=10"])
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        for hook in args.hooks:
            run_dir = args.out / f"{hook}-seed{seed}"
            extra = {"int8": args.int8_args, "topk": args.topk_args, "powersgd": args.powersgd_args}.get(hook, [])
            command = [sys.executable, "train.py", f"recipe={args.recipe}", "trainer.strategy=ddp",
                       f"trainer.devices={args.devices}", f"trainer.accelerator={args.accelerator}",
                       "trainer.enable_progress_bar=false", f"seed={seed}", f"run_dir={run_dir.resolve()}",
                       *hook_overrides(hook, extra), *args.overrides]
            print(" ".join(command), flush=True)
            start = time.perf_counter()
            subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            row = {"hook": hook, "seed": seed, "args": extra, "wall_s": round(time.perf_counter() - start, 1),
                   **read_run(run_dir)}
            results.append(row)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
            print(json.dumps({k: row[k] for k in row if not k.startswith("test/gate")}), flush=True)
    lines = [f"Recipe `{args.recipe}`, {args.devices} x {args.accelerator}, overrides {args.overrides or 'none'}.",
             "", "| hook | args | seed | test acc | bytes/step (steady) | compression (steady) | "
             "compression (whole run) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['hook']} | {' '.join(r['args'])} | {r['seed']} | {100 * r['test/acc']:.2f} | "
                     f"{r.get('steady/bytes_per_step', float('nan')):.0f} | "
                     f"{r.get('steady/compression', float('nan')):.1f}x | {r.get('run/compression', float('nan')):.1f}x |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
