"""Error of the int8 hook against the exact mean of the ranks' gradients, next to the former shared-scale int8
all-reduce (one agreed scale per block, ``127 // W`` levels so that the int8 sum of W ranks cannot overflow).

Launch with torchrun (CPU/gloo is enough). Every rank computes the gradient of the same model of
``throughput.py`` on its own synthetic batch; the hook (without error feedback, so every step is one fresh
rounding) averages them, and rank 0 compares its output with the exact mean and with the former scheme, which
is computed here in plain tensor code from all ranks' gradients. Errors are relative to the gradient's scale:
largest |error| / largest |exact mean|, and mean |error| / mean |exact mean|, medians over the steps.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 8 benchmarks/ddp/int8_error.py --model progressive --steps 5
"""

import argparse
import statistics

import torch
import torch.distributed as dist
from throughput import build, make_batch  # benchmarks/ddp/throughput.py
from torch.nn.parallel import DistributedDataParallel as DDP

from fusion.distributed.int8 import LEVELS
from fusion.distributed.registry import make_comm_hook


def recorded(hook, calls: list[dict]):
    """Wraps ``hook``: keeps every bucket's gradient, its tensors' sizes and the hook's output."""

    def wrapped(state, bucket):
        call = {"input": bucket.buffer().clone(), "sizes": [p.numel() for p in bucket.parameters()]}
        calls.append(call)

        def keep(future):
            call["output"] = future.value().clone()
            return future.value()

        return hook(state, bucket).then(keep)

    return wrapped


def shared_scale_mean(inputs: torch.Tensor, sizes: list[int], block: int) -> torch.Tensor:
    """The former scheme on (W, N) gradients: per block of a tensor, one scale (the largest |value| of all
    ranks / (127 // W)); every rank rounds to it and the int8 values are summed."""
    world, levels = inputs.shape[0], LEVELS // inputs.shape[0]
    out, offset = torch.empty(inputs.shape[1], dtype=inputs.dtype), 0
    for size in sizes:
        for start in range(offset, offset + size, block):
            part = inputs[:, start:min(start + block, offset + size)]  # (W, b)
            scale = (part.abs().max() / levels).clamp(min=torch.finfo(inputs.dtype).tiny)
            out[start:start + part.shape[1]] = (part / scale).round().sum(0) * scale / world
        offset += size
    return out


def relative_errors(output: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    error = (output - exact).abs()
    return float(error.max() / exact.abs().max()), float(error.mean() / exact.abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="progressive")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--block-size", type=int, default=512)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model, shape = build(args.model)
    ddp = DDP(model)
    calls: list[dict] = []
    state, hook = make_comm_hook("int8", model, None, {"block_size": args.block_size, "error_feedback": False})
    ddp.register_comm_hook(state, recorded(hook, calls))
    rows = {"new": [], "old": []}
    for step in range(args.steps):
        torch.manual_seed(1000 * step + rank)
        ddp.zero_grad()
        ddp(make_batch(args.batch_size, shape, 10, torch.device("cpu"))).backward()
        for call in calls:
            inputs = [torch.empty_like(call["input"]) for _ in range(world)]
            dist.all_gather(inputs, call["input"])
            inputs = torch.stack(inputs).double()  # (W, N)
            exact = inputs.mean(0)
            rows["new"].append(relative_errors(call["output"].double(), exact))
            rows["old"].append(relative_errors(shared_scale_mean(inputs, call["sizes"], args.block_size), exact))
        calls.clear()
    if rank == 0:
        numel = sum(p.numel() for p in model.parameters())
        print(f"{args.model} ({numel / 1e6:.2f} M parameters), {world} ranks, blocks of {args.block_size}, "
              f"{args.steps} steps, medians over every bucket of every step:")
        print("| scheme | levels per rank | max abs error / max abs mean | mean abs error / mean abs mean |")
        print("|---|---|---|---|")
        for label, levels in (("old", LEVELS // world), ("new", LEVELS)):
            largest = statistics.median(r[0] for r in rows[label])
            typical = statistics.median(r[1] for r in rows[label])
            name = "shared scales, int8 all-reduce" if label == "old" else "all-to-all + all-gather (int8 hook)"
            print(f"| {name} | {levels} | {largest:.2e} | {typical:.2e} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
