"""Time and peak memory of preparing the sync data module on a folder: cold (empty cache) and warm (filled).

Each measurement runs in a fresh process (`--one`), so imports and peak RSS are its own: `rss_main_mb` is the
process that prepares the module (`rss_imports_mb`: the same after the imports, before preparing),
`rss_worker_mb` the largest decoding worker. Cold runs: decode_workers=1
(serial, in the process) and the default (usable CPUs less one; where that is 1, also 2); warm: the default
again on the filled cache. After preparing, every training clip is read once through its windows (one pass of
the training DataLoader), so the memory-mapped pages are counted too.

    python benchmarks/sync/prepare_scale.py --video-dir ../shared/data/grid/video \
        --out benchmarks/sync/results/prepare_scale.json
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(video_dir: str, cache_dir: str, workers: int | None, mouth: str, max_clips: int | None) -> dict:
    """Prepares the module once in this process; returns seconds and peak RSS (MB)."""
    import torch

    from fusion.data.sync_clips import default_decode_workers
    from fusion.data.sync_data import SyncDataModule

    imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    module = SyncDataModule(video_dir=video_dir, cache_dir=cache_dir, mouth=mouth, decode_workers=workers,
                            on_error="skip", max_clips=max_clips,
                            **({"num_test": 2, "num_val": 1} if max_clips else {}))
    module.prepare(None)
    seconds = time.perf_counter() - start
    torch.manual_seed(0)
    windows = sum(batch["video"].shape[0] for batch in module.train_dataloader())
    return {"workers": workers or default_decode_workers(), "seconds": round(seconds, 2),
            "files": len(module.list_files()), "clips": sum(module.spec["num_clips"].values()), "train_windows": windows,
            "rss_imports_mb": round(imports_mb, 1), "rss_main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def measure(video_dir: str, cache_dir: Path, workers: int | None, mouth: str, max_clips: int | None) -> dict:
    command = [sys.executable, __file__, "--one", "--video-dir", video_dir, "--cache-dir", str(cache_dir),
               "--mouth", mouth] + ([] if workers is None else ["--workers", str(workers)])
    command += [] if max_clips is None else ["--max-clips", str(max_clips)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video-dir", required=True)
    parser.add_argument("--mouth", default="track")
    parser.add_argument("--max-clips", type=int, default=None, help="first N files only (a quick check)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.video_dir, args.cache_dir, args.workers, args.mouth, args.max_clips)))
        return
    from fusion.data.sync_clips import default_decode_workers

    runs = [("cold", 1), ("cold", None)] + ([("cold", 2)] if default_decode_workers() == 1 else []) + [("warm", None)]
    root = Path(tempfile.mkdtemp(prefix="sync_prepare_"))
    results = []
    try:
        for kind, workers in runs:
            cache = root / "cache"
            if kind == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            row = {"cache": kind, **measure(args.video_dir, cache, workers, args.mouth, args.max_clips)}
            row["files_per_s"] = round(row["files"] / row["seconds"], 2)
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"video_dir": args.video_dir, "mouth": args.mouth, "runs": results},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
