"""Per-bucket cost of each comm hook's body: operators, kernel launches, host syncs and wall time.

Launch with torchrun (CPU/gloo or CUDA/NCCL). Each hook trains its own DDP copy of a model of
``throughput.py``; over a few steps, everything the hook function runs (not its completion callback) is
counted per bucket: the ATen operators it dispatches (views excluded; about one kernel launch each on CUDA) and,
on CUDA, host synchronisations (``torch.cuda.set_sync_debug_mode``). The body's wall time includes waiting in
blocking collectives, so it is only comparable between hooks on an idle machine.

    torchrun --nproc_per_node 2 benchmarks/ddp/hook_profile.py --model progressive --device cpu
    torchrun --nproc_per_node 2 benchmarks/ddp/hook_profile.py --model progressive --device cuda --out prof.json
"""

import argparse
import json
import os
import time
import warnings
from collections import Counter

import torch
import torch.distributed as dist
from throughput import HOOK_ARGS, build, make_batch  # benchmarks/ddp/throughput.py
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils._python_dispatch import TorchDispatchMode

from fusion.distributed.registry import make_comm_hook

VIEW_OPS = {"view", "_unsafe_view", "reshape", "slice", "select", "as_strided", "alias", "detach", "expand",
            "unsqueeze", "squeeze", "t", "transpose", "split", "chunk", "split_with_sizes", "unbind"}


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (composite ops as the kernels they decompose into)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def instrumented(hook, seconds: list[float], ops: Counter, syncs: list[int]):
    """Wraps ``hook``: wall time of its body, the operators it dispatches and (CUDA) its host syncs."""

    def wrapped(state, bucket):
        counter = OpCounter()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if bucket.buffer().is_cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with counter:
                    future = hook(state, bucket)
            finally:
                if bucket.buffer().is_cuda:
                    torch.cuda.set_sync_debug_mode("default")
        seconds.append(time.perf_counter() - start)
        ops.update(counter.counts)
        syncs.append(sum("synchroniz" in str(w.message) for w in caught))
        return future

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="progressive")
    parser.add_argument("--hooks", nargs="+", default=["allreduce", "fp16", "int8", "topk"],
                        choices=list(HOOK_ARGS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 3 unprofiled ones)")
    parser.add_argument("--out", help="JSON file for the rows (rank 0)")
    args = parser.parse_args()
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank = dist.get_rank()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    rows = []
    for hook_name in args.hooks:
        torch.manual_seed(0)
        model, shape = build(args.model)
        model = model.to(device)
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        state, hook = make_comm_hook(hook_name, model, None, HOOK_ARGS[hook_name])
        seconds: list[float] = []
        ops: Counter[str] = Counter()
        syncs: list[int] = []
        ddp.register_comm_hook(state, instrumented(hook, seconds, ops, syncs))
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        batch = make_batch(args.batch_size, shape, 1000 if args.model == "resnet50" else 10, device)

        def step(ddp=ddp, optimizer=optimizer, batch=batch):
            optimizer.zero_grad(set_to_none=True)
            ddp(batch).backward()
            optimizer.step()

        for _ in range(3):
            step()
        seconds.clear()
        ops.clear()
        syncs.clear()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        buckets = len(seconds)
        work = {name: n / buckets for name, n in sorted(ops.items()) if name not in VIEW_OPS}
        row = {
            "model": args.model, "hook": hook_name, "device": str(device), "world_size": dist.get_world_size(),
            "buckets_per_step": buckets / args.steps,
            "ops_per_bucket": sum(work.values()),  # non-view operators: about one kernel launch each on CUDA
            "host_syncs_per_bucket": sum(syncs) / buckets,  # CUDA only (sync debug mode)
            "collectives_per_step": state.counter.last_step_collectives,
            "hook_body_ms_per_bucket": 1e3 * sum(seconds) / buckets,
            "ops": work,
        }
        rows.append(row)
        if rank == 0:
            print(f"{hook_name:>12}: {row['buckets_per_step']:.0f} buckets/step, {row['collectives_per_step']} "
                  f"collectives/step; per bucket {row['ops_per_bucket']:.1f} operators, "
                  f"{row['host_syncs_per_bucket']:.1f} host syncs, {row['hook_body_ms_per_bucket']:.3f} ms in the "
                  f"hook body", flush=True)
    if rank == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
