"""Accuracy table of the fusion recipes and unimodal baselines, on the built-in set and on MNIST + FSDD.

    python benchmarks/fusion_accuracy.py --realdata ../shared/data --out benchmarks/out/fusion [--jobs 4] \
        [--seeds 0 1] [--gpus 4] [--threads 2]

Builds the speaker-disjoint manifests (clean and degraded images) with fusion.data.pair_digits, trains every
(data set, model) pair with `train.py` in subprocesses, and writes `results.json` and `results.md` (test
accuracy, macro-F1 and training time per run). Unimodal baselines use `data.modalities=[...]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


FSDD_SPEAKERS = ["jackson", "nicolas", "theo", "yweweler"]


def manifests(realdata: Path | None, out: Path, speakers: list[str], degrade: float, degraded_speakers: list[str],
              images_per_recording: int, held_out_val: bool) -> dict[str, str | None]:
    """Data set name -> manifest (None = built-in). With `held_out_val`, val is a speaker not in train."""
    sets: dict[str, str | None] = {"builtin": None}
    if realdata is None:
        return sets
    for speaker in speakers:
        val_speaker = FSDD_SPEAKERS[(FSDD_SPEAKERS.index(speaker) + 1) % len(FSDD_SPEAKERS)] if held_out_val else None
        for level in (0.0, degrade) if speaker in degraded_speakers else (0.0,):
            name = f"fsdd-{speaker}" + ("-degraded" if level else "") + (f"-val-{val_speaker}" if val_speaker else "")
            path = out / "manifests" / name / "manifest.csv"
            cmd = [sys.executable, "-m", "fusion.data.pair_digits", "--images", str(realdata / "mnist"),
                   "--audio", str(realdata / "fsdd" / "recordings"), "--test-speaker", speaker, "--out", str(path),
                   "--degrade", str(level), "--images-per-recording", str(images_per_recording)]
            subprocess.run(cmd + (["--val-speaker", val_speaker] if val_speaker else []), check=True, cwd=REPO)
            sets[name] = str(path)
    return sets


def runs(sets: dict[str, str | None], epochs: int, real_epochs: int,
         extra_models: dict[str, list[str]]) -> list[tuple[str, str, list[str]]]:
    jobs = []
    for data_name, manifest in sets.items():
        n = epochs if manifest is None else real_epochs
        data = [f"data.manifest={manifest}"] if manifest else []
        for name, overrides in extra_models.items():
            jobs.append((data_name, name, [*overrides, *data, f"trainer.max_epochs={n}"]))
        modalities = ["image", "audio", "text"] if manifest is None else ["image", "audio"]
        for recipe in ("early", "late", "progressive"):
            jobs.append((data_name, recipe, [f"recipe={recipe}", *data, f"trainer.max_epochs={n}"]))
        for m in modalities:
            # rows without this modality are skipped (and listed in the run folder's skipped_rows.csv)
            jobs.append((data_name, f"{m} only", ["recipe=late", *data, f"data.modalities=[{m}]", "data.on_error=skip",
                                                  f"trainer.max_epochs={n}"]))
    return jobs


def parse_extra_model(spec: str) -> tuple[str, list[str]]:
    """'name=o1,o2' -> ('name', ['o1', 'o2']); commas inside {...} or [...] stay in their override."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--extra-models: expected NAME=OVERRIDE[,OVERRIDE...], got '{spec}'")
    overrides, depth, current = [], 0, ""
    for char in rest:
        depth += 1 if char in "{[" else -1 if char in "}]" else 0
        if char == "," and depth == 0:
            overrides.append(current)
            current = ""
        else:
            current += char
    return name, [*overrides, current]


def train_one(job: tuple[str, str, list[str]], seed: int, slot: int, out: Path, extra: list[str], real_extra: list[str],
              gpus: int, threads: int) -> dict:
    """Trains one (data set, model, seed) run in a subprocess; job slot `slot` picks the GPU (round robin)."""
    data_name, model, overrides = job
    if data_name != "builtin":
        extra = [*extra, *real_extra]
    run_dir = out / "runs" / data_name / (model.replace(" ", "_") + (f"-seed{seed}" if seed else ""))
    cmd = [sys.executable, "train.py", *overrides, *extra, f"seed={seed}", f"hydra.run.dir={run_dir}",
           "trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return {"data": data_name, "model": model, "seed": seed, "error": proc.stderr[-500:]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"[{data_name}] {model} seed {seed}: acc={metrics['test/acc']:.4f} ({wall:.0f}s)", flush=True)
    result = {"data": data_name, "model": model, "seed": seed, "acc": metrics["test/acc"], "f1": metrics["test/f1"],
            "fit_seconds": metrics.get("fit_seconds"), "wall_seconds": round(wall, 1), "run_dir": str(run_dir)}
    with open(out / "results.jsonl", "a") as f:  # partial results survive an interrupted sweep
        f.write(json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--realdata", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "fusion")
    parser.add_argument("--speakers", nargs="+", default=["theo"], help="test speakers (one run each)")
    parser.add_argument("--degraded-speakers", nargs="*", default=["theo"], help="test speakers also run with degraded images")
    parser.add_argument("--degrade", type=float, default=0.35)
    parser.add_argument("--images-per-recording", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="epochs on the built-in set")
    parser.add_argument("--real-epochs", type=int, default=15, help="epochs on MNIST + FSDD")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one run each)")
    parser.add_argument("--all-seeds-models", nargs="*", default=None,
                        help="only these models run every seed; the others run the first seed (default: all models)")
    parser.add_argument("--builtin-seeds", type=int, nargs="+", default=None, help="seeds on the built-in set (default: --seeds)")
    parser.add_argument("--gpus", type=int, default=0, help="spread runs over this many GPUs (0: leave CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads per run")
    parser.add_argument("--only", nargs="*", default=None, help="data set names to run (default: all)")
    parser.add_argument("--models", nargs="*", default=None, help="models to run, e.g. late progressive 'image only'")
    parser.add_argument("--held-out-val", action="store_true",
                        help="val split = another speaker (for held-out gate calibration: model.gate_calibration_epochs=N)")
    parser.add_argument("--real-extra", nargs="*", default=[], help="extra Hydra overrides for MNIST + FSDD runs")
    parser.add_argument("--extra-models", nargs="*", default=[], metavar="NAME=OVERRIDE[,OVERRIDE...]",
                        help="additional rows, e.g. 'progressive-warp25=recipe=progressive,model.encoders.audio.augment_args={warp:0.25}'"
                             " (overrides split on commas outside braces)")
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sets = manifests(args.realdata, args.out, args.speakers, args.degrade, args.degraded_speakers,
                     args.images_per_recording, args.held_out_val)
    if args.only:
        sets = {k: v for k, v in sets.items() if k in args.only}
    extra_models = dict(parse_extra_model(spec) for spec in args.extra_models)
    jobs = [j for j in runs(sets, args.epochs, args.real_epochs, extra_models) if args.models is None or j[1] in args.models]
    builtin_seeds = args.builtin_seeds or args.seeds
    def seeds_of(job: tuple[str, str, list[str]]) -> list[int]:
        seeds = builtin_seeds if job[0] == "builtin" else args.seeds
        return seeds if args.all_seeds_models is None or job[1] in args.all_seeds_models else seeds[:1]

    # slowest models (progressive and its variants) start first, unimodal ones last: a short tail
    seeded = sorted(((job, seed) for job in jobs for seed in seeds_of(job)),
                    key=lambda js: ("progressive" not in js[0][1], "only" in js[0][1], js[1]))
    slots = itertools.count()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda js: train_one(js[0], js[1], next(slots), args.out, args.extra, args.real_extra,
                                                     args.gpus, args.threads), seeded))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| data | model | seed | test acc | macro-F1 | fit time (s) |", "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['data']} | {r['model']} | {r['seed']} | error | | |")
        else:
            lines.append(f"| {r['data']} | {r['model']} | {r['seed']} | {100 * r['acc']:.2f} % | {100 * r['f1']:.2f} % "
                         f"| {r['fit_seconds']} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
