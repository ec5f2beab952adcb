"""A tiny DDP model, its losses and a recording wrapper for hooks, shared by the two-process hook tests."""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fusion.distributed.registry import make_comm_hook


def make_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def loss_of(model: nn.Module, rank: int, step: int, micro: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(10_000 * step + 100 * micro + rank)
    dtype = next(model.parameters()).dtype
    x = torch.randn(6, 8, generator=generator).to(dtype)  # (B, 8)
    y = torch.randn(6, 4, generator=generator).to(dtype)  # (B, 4)
    return ((model(x) - y) ** 2).mean() * (1.0 + step)


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _clone_or_none(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.clone()


def recording(hook):
    """Wraps a hook; per call keeps the bucket input, the residual before and after (``old``, ``new``), and the
    result (``output``).
    """
    calls: list[dict] = []

    def recorded_hook(state, bucket):
        entry = {"step": state.step, "input": bucket.buffer().detach().clone(),
                 "old": _clone_or_none(state.residuals.get(bucket)),
                 "sizes": [p.numel() for p in bucket.parameters()], "positions": state.residuals.layout(bucket)}
        calls.append(entry)

        def keep(future):
            entry["output"] = future.value().detach().clone()
            entry["new"] = _clone_or_none(state.residuals.get(bucket))
            return future.value()

        return hook(state, bucket).then(keep)

    recorded_hook.calls = calls
    return recorded_hook


def wrap(name: str, args: dict | None = None, dtype=torch.float32, bucket_cap_mb: float | None = None,
         record: bool = False, module: nn.Module | None = None):
    """DDP of ``module`` (default: :func:`make_model`) with hook ``name`` registered; (ddp, state, hook)."""
    module = module if module is not None else make_model(dtype)
    ddp = DDP(module, bucket_cap_mb=bucket_cap_mb) if bucket_cap_mb else DDP(module)
    state, hook = make_comm_hook(name, module, None, args)
    if record:
        hook = recording(hook)
    ddp.register_comm_hook(state, hook)
    return ddp, state, hook


def train(ddp: DDP, optimizer, rank: int, steps: range) -> list[list[torch.Tensor]]:
    """Runs ``steps``; returns the reduced gradients of every step."""
    seen = []
    for step in steps:
        optimizer.zero_grad()
        loss_of(ddp, rank, step).backward()
        seen.append(grads(ddp.module))
        optimizer.step()
    return seen


def make_optimizer(ddp: DDP, momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=momentum)


def reduced_mean(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()
