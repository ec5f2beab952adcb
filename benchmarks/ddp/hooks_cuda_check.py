"""Do the comm hooks compute on CUDA (NCCL) what they compute on the CPU (gloo)? Run with 2 GPUs:

    torchrun --nproc_per_node 2 benchmarks/ddp/hooks_cuda_check.py [--steps 30] [--out FILE] [--only LABEL ...] [--unguarded]

For every hook configuration, two replicas of one model train side by side in each process from the same
initial weights on the same batches: one on the CPU whose hook reduces over a gloo group, one on this rank's GPU
whose hook reduces over NCCL. Printed per configuration: the largest parameter difference between the two after
``--steps`` optimizer steps, relative to the largest parameter, and whether every parameter stayed finite.
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fusion.distributed.int8
import fusion.distributed.topk
from fusion.distributed.registry import make_comm_hook

# label -> (hook, hook args, optimizer: "sgd" (momentum 0.9) or "adamw")
CONFIGS = {
    "allreduce": ("allreduce", {}, "adamw"),
    "int8": ("int8", {}, "adamw"),
    "topk": ("topk", {"ratio": 0.01, "warmup_steps": 2, "density_warmup_steps": 0}, "adamw"),
    "topk_density_warmup": ("topk", {"ratio": 0.001, "warmup_steps": 2, "density_warmup_steps": 12}, "adamw"),
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 32, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 64, 256),
                         nn.LayerNorm(256), nn.ReLU(), nn.Linear(256, 10))


def make_optimizer(kind: str, params) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


def compare(label: str, hook: str, args: dict, optimizer_kind: str, steps: int, gloo) -> dict:
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
    replicas = {}
    for where, group in (("cpu", gloo), ("cuda", None)):
        module = make_model().to(device if where == "cuda" and device is not None else "cpu")
        ddp = DDP(module, process_group=group, device_ids=[device.index] if where == "cuda" and device else None)
        state, fn = make_comm_hook(hook, module, group, args)
        ddp.register_comm_hook(state, fn)
        replicas[where] = (ddp, make_optimizer(optimizer_kind, ddp.parameters()))
    for step in range(steps):
        generator = torch.Generator().manual_seed(1000 * step + rank)
        x, y = torch.randn(16, 4, 64, generator=generator), torch.randint(0, 10, (16,), generator=generator)
        for where, (ddp, optimizer) in replicas.items():
            target = device if where == "cuda" and device is not None else "cpu"
            optimizer.zero_grad()
            nn.functional.cross_entropy(ddp(x.to(target)), y.to(target)).backward()
            optimizer.step()
    cpu = torch.cat([p.detach().flatten() for p in replicas["cpu"][0].module.parameters()])
    cuda = torch.cat([p.detach().flatten().cpu() for p in replicas["cuda"][0].module.parameters()])
    start = torch.cat([p.detach().flatten() for p in make_model().parameters()])
    return {"label": label, "finite_cpu": bool(torch.isfinite(cpu).all()), "finite_cuda": bool(torch.isfinite(cuda).all()),
            "max_diff_rel": float((cpu - cuda).abs().max() / cpu.abs().max()),
            "moved_rel": float((cpu - start).abs().max() / cpu.abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--unguarded", action="store_true",
                        help="turn fusion.distributed.base.used_by_callback off (to see what it prevents)")
    cli = parser.parse_args()
    if cli.unguarded:
        for module in (fusion.distributed.topk, fusion.distributed.int8):
            module.used_by_callback = lambda *items: None
    # without a GPU (a dry run of this script) the second replica runs on the CPU over the default gloo group
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    gloo = dist.new_group(backend="gloo")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = [compare(label, *CONFIGS[label], cli.steps, gloo) for label in cli.only]
    if dist.get_rank() == 0:
        for row in rows:
            print(json.dumps(row), flush=True)
        if cli.out:
            with open(cli.out, "w") as handle:
                json.dump(rows, handle, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
