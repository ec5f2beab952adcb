"""Decisions of trained fusion runs, stored for offline analysis of decision gates.

    python benchmarks/fusion/dump_decisions.py --out decisions.pt RUN_DIR [RUN_DIR ...] [--jobs 5]

For every run folder: the best checkpoint's decisions on the test split (each modality's, the fused state's, and
the gated output) and, for cross-fitted runs, the out-of-fold decisions of its folds; as float16, keyed by the
run folder. Runs that share a manifest share one data validation (one process per manifest).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]


def half(data: dict) -> dict:
    return {k: half(v) if isinstance(v, dict) else v.half() if v.is_floating_point() else v for k, v in data.items()}


def dump_group(runs: list[str]) -> dict[str, dict]:
    sys.path.insert(0, str(REPO))
    from fusion.runtime.checkpoints import load_checkpoint_file
    from fusion.tasks.cross_fit import DECISIONS_FILE, collect_decisions, merge_decisions

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = OmegaConf.load(Path(runs[0]) / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    out = {}
    for run in runs:
        cfg = OmegaConf.load(Path(run) / "config.yaml")
        task = instantiate(cfg.model, data_spec=datamodule.spec, _recursive_=False, _convert_="all")
        task.load_state_dict(load_checkpoint_file(Path(run) / "best.ckpt")["state_dict"])
        entry = {"test": collect_decisions(task.model.to(device), datamodule.test_dataloader(), device)}
        folds = sorted(Path(run).glob(f"cross_fit/fold*/{DECISIONS_FILE}"))
        if folds:
            entry["oof"] = merge_decisions([torch.load(f, weights_only=True) for f in folds])
        out[run] = half(entry)
        print(f"{run}: {len(entry['test']['label'])} test rows" + (f", {len(entry['oof']['label'])} out-of-fold" if folds else ""), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (config.yaml + best.ckpt)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()
    groups = defaultdict(list)
    for run in args.runs:
        groups[str(OmegaConf.load(Path(run) / "config.yaml").data.get("manifest"))].append(run)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(args.jobs, len(groups)), mp_context=context) as pool:
        results = {}
        for part in pool.map(dump_group, groups.values()):
            results.update(part)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(results, args.out)
    print(f"wrote {len(results)} run(s) to {args.out}")


if __name__ == "__main__":
    main()
