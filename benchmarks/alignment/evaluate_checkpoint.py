"""Tests an alignment checkpoint of a ``recipe=clip`` run folder and writes its retrieval metrics.

Useful for a run that was stopped before its final test (best.ckpt is written after every improving
epoch). The data is rebuilt from the run's ``config.yaml``.

    python benchmarks/alignment/evaluate_checkpoint.py checkpoints/clip/builtin [--ckpt best.ckpt] [--out metrics_partial.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fusion.tasks.align import AlignmentTask


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="run folder with config.yaml and the checkpoint")
    parser.add_argument("--ckpt", default="best.ckpt")
    parser.add_argument("--out", default="metrics_partial.json", help="file name inside the run folder")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    config = args.run / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"no config.yaml in '{args.run}'")
    cfg = OmegaConf.load(config)
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    task = AlignmentTask.load_from_checkpoint(args.run / args.ckpt, map_location="cpu", weights_only=True)
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False)
    results = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    metrics = {k: float(v) for k, v in results.items()}
    (args.run / args.out).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"wrote {args.run / args.out}")


if __name__ == "__main__":
    main()
