"""How long a training step waits on a checkpoint write: synchronous vs background (asynchronous) writing.

Trains an MLP with AdamW and saves {weights, optimizer state} every `--every` steps through each writer,
side by side in one process, and reports per writer the median time the training loop is blocked by the
save call ("stall"), the wall time of the whole run, and the ratio against our synchronous atomic writer.

Writers: lightning-torch (Lightning's TorchCheckpointIO: fsspec transaction, no fsync), sync (our atomic
write: temp file, fsync, rename, fsync folder), lightning-async (Lightning's AsyncCheckpointIO around our
atomic writer: clone on the device, unbounded queue), async (ours: copy to CPU, at most one pending write).

    python benchmarks/reliability/checkpoint_stall.py --device cpu --params-m 20 --steps 60 --every 10
    python benchmarks/reliability/checkpoint_stall.py --device cuda --params-m 100 --width 4096 --batch 4096 --steps 200 --every 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from torch import nn

from fusion.runtime.checkpoints import AsyncAtomicCheckpointIO, AtomicCheckpointIO


def build_model(params_m: float, width: int, device: str) -> nn.Module:
    """An MLP of `width`-wide square layers with about `params_m` million parameters."""
    layers = max(1, round(params_m * 1e6 / (width * width + width)))
    blocks = [nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(layers)]
    return nn.Sequential(*blocks).to(device)


def make_writer(name: str):
    if name == "lightning-torch":
        return TorchCheckpointIO()
    if name == "sync":
        return AtomicCheckpointIO()
    if name == "lightning-async":
        return AsyncCheckpointIO(AtomicCheckpointIO())
    if name == "async":
        return AsyncAtomicCheckpointIO()
    raise ValueError(name)


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(writer_name: str, args, folder: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(args.params_m, args.width, args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    writer = make_writer(writer_name)
    x = torch.randn(args.batch, args.width, device=args.device)  # (B, D)
    stalls, step_times = [], []
    sync_device(args.device)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync_device(args.device)
        if step % args.every == 0:
            s0 = time.perf_counter()
            writer.save_checkpoint({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()],
                                    "global_step": step}, folder / f"{writer_name}.ckpt")
            sync_device(args.device)
            stalls.append(time.perf_counter() - s0)
        step_times.append(time.perf_counter() - t0)
    writer.teardown()  # waits for the last background write
    wall = time.perf_counter() - start
    size = (folder / f"{writer_name}.ckpt").stat().st_size
    params = sum(p.numel() for p in model.parameters())
    del model, optimizer
    return {"writer": writer_name, "params": params, "file_mb": size / 2**20, "saves": len(stalls),
            "stall_median_ms": 1e3 * statistics.median(stalls), "stall_max_ms": 1e3 * max(stalls),
            "step_median_ms": 1e3 * statistics.median(step_times), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params-m", type=float, default=20.0, help="model size, millions of parameters")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="save every N steps")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all writers; medians are reported")
    parser.add_argument("--writers", default="lightning-torch,sync,lightning-async,async")
    parser.add_argument("--dir", default=None, help="folder for the checkpoint files (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    writers = args.writers.split(",")
    rounds: dict[str, list[dict]] = {w: [] for w in writers}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(args.repeats):
            for name in writers:  # interleaved, so drifts in machine load hit every writer alike
                rounds[name].append(run(name, args, Path(tmp)))
    summary = []
    for name in writers:
        rs = rounds[name]
        summary.append({"writer": name, "params": rs[0]["params"], "file_mb": round(rs[0]["file_mb"], 1),
                        "saves": rs[0]["saves"],
                        "stall_median_ms": round(statistics.median(r["stall_median_ms"] for r in rs), 2),
                        "stall_max_ms": round(max(r["stall_max_ms"] for r in rs), 2),
                        "step_median_ms": round(statistics.median(r["step_median_ms"] for r in rs), 2),
                        "wall_s": round(statistics.median(r["wall_s"] for r in rs), 3)})
    base = next((s for s in summary if s["writer"] == "sync"), summary[0])
    for s in summary:
        s["stall_vs_sync"] = round(s["stall_median_ms"] / base["stall_median_ms"], 3)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {device}; torch {torch.__version__}; {args.steps} steps, save every {args.every}, "
          f"{args.repeats} rounds (medians)")
    print("| writer | params | file MB | stall median ms | stall max ms | stall / sync | step median ms | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['writer']} | {s['params'] / 1e6:.1f} M | {s['file_mb']} | {s['stall_median_ms']} | "
              f"{s['stall_max_ms']} | {s['stall_vs_sync']} | {s['step_median_ms']} | {s['wall_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "args": vars(args), "results": summary}, indent=2))


if __name__ == "__main__":
    main()
