"""Accuracy and wire bytes of comm hooks over several seeds, data-parallel runs launched concurrently.

Every (hook variant, seed) is one ``train.py`` run with ``trainer.strategy=ddp`` on ``--devices`` CPU processes
(gloo, ``OMP_NUM_THREADS=--threads`` each), up to ``--jobs`` runs at a time, each in its own folder
``OUT/<variant>/seed<k>`` with its own rendezvous port. The built-in data set is generated once before any run
starts. A finished run (``metrics.json`` present) is not run again, so an interrupted sweep can be continued.

A variant is ``hook`` or ``label=hook:key=value,key=value`` (hook arguments, e.g. ``topk1=topk:ratio=0.01``),
optionally followed by ``;override;override`` (train.py overrides of this variant only, after the shared ones,
e.g. ``sgdnone=none;model.optimizer=sgd;model.lr=0.1``). Quote it in the shell (``;``). Reported per variant:
test accuracy mean and std over seeds, the paired difference against ``--baseline`` (variant label, default
``none``) with the same seed (mean, std, worst), bytes per compressed step and compression against an fp32
all-reduce: averaged over the compressed steps (a density warm-up counts), at the last logged step (after every
warm-up), and whole run. The "hook args" column lists the hook arguments, then the variant's overrides.

    python benchmarks/ddp_accuracy.py --out checkpoints/ddp_accuracy --jobs 30 --seeds 0 1 2 3 4  # default variants
    python benchmarks/ddp_accuracy.py --out checkpoints/ddp_accuracy --jobs 2 --seeds 0 \\
        --variants none int8 topk0.1=topk:ratio=0.001,warmup_steps=10 topk1=topk:ratio=0.01,warmup_steps=10
    python benchmarks/ddp_accuracy.py --out checkpoints/ddp_sgd --jobs 1 --seeds 0 1 --baseline sgdnone --variants \
        'sgdnone=none;model.optimizer=sgd;model.lr=0.1' \
        'sgdtopk=topk:ratio=0.001,warmup_steps=10,momentum=0.9;model.optimizer=sgd;model.momentum=0;model.lr=0.1'
    python benchmarks/ddp_accuracy.py --out checkpoints/ddp_accuracy --report   # tables from finished runs
"""

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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Variant:
    """A named comm hook configuration, with train.py overrides of its own (``extra``)."""

    label: str
    hook: str
    args: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        if self.hook == "none":
            return ["comm_hook=none", *self.extra]
        return [f"comm_hook={self.hook}"] + [f"+comm_hook_args.{k}={v}" for k, v in self.args.items()] + self.extra

    def describe(self) -> str:
        """Hook arguments then overrides, for the report: ``k=v,k=v; override; override`` (or ``-``)."""
        parts = [",".join(f"{k}={v}" for k, v in self.args.items())] + self.extra
        return "; ".join(part for part in parts if part) or "-"


def parse_variant(text: str) -> Variant:
    """``hook``, ``hook:k=v,...`` or ``label=hook:k=v,...``, each optionally followed by ``;override;...``."""
    head, *extra = text.split(";")
    extra = [override.strip() for override in extra]
    if not all(extra):
        raise ValueError(f"--variants {text!r}: empty override between ';'")
    label, spec = head.split("=", 1) if "=" in head.split(":")[0] else ("", head)
    hook, _, arg_text = spec.partition(":")
    args = {}
    for item in filter(None, arg_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--variants {text!r}: hook argument {item!r} is not key=value")
        args[key] = value
    if not label:
        label = "-".join([hook, *(f"{k}{v}" for k, v in args.items()),
                          *(re.sub(r"[^A-Za-z0-9._+-]", "", override) for override in extra)])
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", label):
        raise ValueError(f"--variants {text!r}: label {label!r} must be letters, digits, '.', '_', '+', '-'")
    return Variant(label, hook, args, extra)


def prepare_builtin_data(overrides: list[str]) -> None:
    """Generates the built-in set once, here, so concurrent runs only read it (unless a manifest is given)."""
    if any(o.startswith("data.manifest=") and o.split("=", 1)[1] not in ("null", "") for o in overrides):
        return
    from omegaconf import OmegaConf

    from fusion.data.builtin_digits import ensure_builtin_digits

    sizes = list(OmegaConf.load(REPO / "recipes" / "data" / "manifest.yaml").builtin_size)
    for o in overrides:
        if o.startswith("data.builtin_size="):
            sizes = [int(x) for x in o.split("=", 1)[1].strip("[]").split(",")]
    print(f"built-in data: {ensure_builtin_digits(n_train=sizes[0], n_val=sizes[1], n_test=sizes[2])}", flush=True)


def free_port(start: int, taken: set[int]) -> int:
    """The first port >= ``start`` not handed out yet and not bound on this host."""
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


def run_all(args: argparse.Namespace, variants: list[Variant]) -> None:
    todo = [(v, seed) for seed in args.seeds for v in variants
            if args.force or not (args.out / v.label / f"seed{seed}" / "metrics.json").exists()]
    print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)
    running: list[tuple[subprocess.Popen, Variant, int, float]] = []
    ports: set[int] = set()
    failed = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               MASTER_ADDR="127.0.0.1")
    while todo or running:
        while todo and len(running) < args.jobs:
            variant, seed = todo.pop(0)
            run_dir = (args.out / variant.label / f"seed{seed}").resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
            port = free_port(args.base_port, ports)
            command = [sys.executable, "train.py", f"recipe={args.recipe}", "trainer.strategy=ddp",
                       f"trainer.devices={args.devices}", f"trainer.accelerator={args.accelerator}",
                       "trainer.enable_progress_bar=false", f"seed={seed}", f"run_dir={run_dir}",
                       *variant.overrides(), *args.overrides]
            (run_dir / "command.txt").write_text(" ".join(command) + "\n")
            log = open(run_dir / "train.log", "w")
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       env=dict(env, MASTER_PORT=str(port)))
            running.append((process, variant, seed, time.perf_counter()))
        time.sleep(2.0)
        for entry in list(running):
            process, variant, seed, start = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            status = "ok" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            if process.returncode != 0:
                failed.append(f"{variant.label}/seed{seed}")
            print(f"{variant.label} seed {seed}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed runs (see their train.log): {failed}", flush=True)


def collect(out: Path, variants: list[Variant], seeds: list[int]) -> list[dict]:
    rows = []
    for variant in variants:
        for seed in seeds:
            path = out / variant.label / f"seed{seed}" / "metrics.json"
            if path.exists():
                metrics = json.loads(path.read_text())
                metrics.update(steady_state(path.parent))
                rows.append({"variant": variant.label, "hook": variant.hook, "args": variant.args,
                             "overrides": variant.extra, "seed": seed,
                             **{k: v for k, v in metrics.items() if not k.startswith("test/gate")}})
    return rows


def steady_state(run_dir: Path) -> dict[str, float]:
    """Bytes per step and compression of the last logged optimizer step (after every warm-up)."""
    log = run_dir / "logs" / "metrics.csv"
    if not log.exists():
        log = next(iter(sorted((run_dir / "logs").glob("*/metrics.csv"))), log)
    if not log.exists():
        return {}
    with log.open() as f:
        logged = [row for row in csv.DictReader(f) if row.get("comm/bytes_per_step")]
    if not logged:
        return {}
    return {"steady/bytes_per_step": float(logged[-1]["comm/bytes_per_step"]),
            "steady/compression": float(logged[-1]["comm/compression"])}


def summarize(rows: list[dict], variants: list[Variant], baseline: str = "none") -> list[dict]:
    """Per variant; the ``diff_vs_none_*`` keys are paired by seed against the variant labelled ``baseline``."""

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else float("nan")

    accuracy = {(r["variant"], r["seed"]): 100 * r["test/acc"] for r in rows}
    fp32 = next((r["comm/fp32_bytes_per_step"] for r in rows if "comm/fp32_bytes_per_step" in r), float("nan"))
    summary = []
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant.label]
        if not mine:
            continue
        accs = [100 * r["test/acc"] for r in mine]
        paired = [accuracy[(variant.label, r["seed"])] - accuracy[(baseline, r["seed"])] for r in mine
                  if (baseline, r["seed"]) in accuracy]
        compressed = [r.get("comm/compressed_bytes_per_step", r.get("comm/bytes_per_step")) for r in mine]
        compressed = [c for c in compressed if c is not None]
        bytes_per_step = statistics.mean(compressed) if compressed else fp32
        whole_run = [r["comm/compression"] for r in mine if "comm/compression" in r]
        steady = [r["steady/compression"] for r in mine if "steady/compression" in r]
        summary.append({
            "variant": variant.label, "hook": variant.hook, "args": variant.args, "overrides": variant.extra,
            "hook_args": variant.describe(), "baseline": baseline, "seeds": len(mine),
            "acc_mean": statistics.mean(accs), "acc_std": spread(accs),
            "diff_vs_none_mean": statistics.mean(paired) if paired else float("nan"),
            "diff_vs_none_std": spread(paired) if paired else float("nan"),
            "diff_vs_none_worst": min(paired) if paired else float("nan"),
            "bytes_per_compressed_step": bytes_per_step, "fp32_bytes_per_step": fp32,
            "compression": fp32 / bytes_per_step if bytes_per_step else float("nan"),
            "compression_whole_run": statistics.mean(whole_run) if whole_run else 1.0,
            "compression_steady": statistics.mean(steady) if steady else 1.0,
            "fit_seconds_mean": statistics.mean(r["fit_seconds"] for r in mine),
        })
    return summary


def markdown(summary: list[dict], header: str, baseline: str = "none") -> str:
    lines = [header, "", f"| variant | hook args | seeds | test acc % (mean ± std) | vs {baseline}, paired "
             "(mean ± std, worst) "
             "| bytes/step (compressed steps) | compression (compressed steps) | compression (last step) "
             "| compression (whole run) |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {s['hook_args']} | {s['seeds']} | {s['acc_mean']:.2f} ± {s['acc_std']:.2f} | "
                     f"{s['diff_vs_none_mean']:+.2f} ± {s['diff_vs_none_std']:.2f} ({s['diff_vs_none_worst']:+.2f}) | "
                     f"{s['bytes_per_compressed_step'] / 1e3:.1f} kB | {s['compression']:.1f}x | "
                     f"{s['compression_steady']:.1f}x | {s['compression_whole_run']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="progressive")
    parser.add_argument("--variants", nargs="+",
                        default=["none", "int8", "topk1=topk:ratio=0.01,warmup_steps=10",
                                 "topk0.1dw=topk:ratio=0.001,warmup_steps=10,density_warmup_steps=48",
                                 "topk0.1dw96=topk:ratio=0.001,warmup_steps=10,density_warmup_steps=96",
                                 "topk1dw=topk:ratio=0.01,warmup_steps=10,density_warmup_steps=48"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--devices", type=int, default=2, help="DDP processes per run")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time (each uses --devices processes)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    parser.add_argument("--base-port", type=int, default=29600, help="rendezvous ports are taken from here up")
    parser.add_argument("--force", action="store_true", help="run again even if a run folder has metrics.json")
    parser.add_argument("--report", action="store_true", help="only summarize finished runs")
    parser.add_argument("--baseline", default="none", help="variant label the paired differences are taken against")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    if len({v.label for v in variants}) != len(variants):
        raise SystemExit("--variants: labels must be unique")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        prepare_builtin_data(args.overrides)
        start = time.perf_counter()
        run_all(args, variants)
        print(f"sweep wall time {time.perf_counter() - start:.0f} s", flush=True)
    rows = collect(args.out, variants, args.seeds)
    summary = summarize(rows, variants, args.baseline)
    header = (f"Recipe `{args.recipe}`, {args.devices} x {args.accelerator} processes per run "
              f"({args.threads} thread(s) each), seeds {args.seeds}, overrides {args.overrides or 'none'}.")
    (args.out / "results.json").write_text(json.dumps({"header": header, "summary": summary, "runs": rows}, indent=2))
    text = markdown(summary, header, args.baseline)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
