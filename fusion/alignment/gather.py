"""All-gather across DDP ranks that keeps gradients, so contrastive negatives come from every rank.

Backward sums the incoming gradient over ranks and returns this rank's slice. Together with DDP's
gradient averaging this makes a loss computed on the gathered batch give the same parameter gradients as
one process holding the whole batch (see ``tests/alignment/test_gather.py``). Ranks may hold different
batch sizes (the last batch of an epoch): tensors are padded to the largest size for the collective.
"""

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_sizes(local_size: int, device: torch.device) -> list[int]:
    size = torch.tensor([local_size], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad]).contiguous()


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenates every rank's rows; backward all-reduces (sums) the gradient and keeps the local rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # x: (B_r, ...)
        sizes = _gather_sizes(x.shape[0], x.device)
        rank = dist.get_rank()
        padded = _pad_rows(x, max(sizes))  # (B_max, ...)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])  # (sum B_r, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # grad: (sum B_r, ...)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` from all ranks in rank order, differentiably.

    Args:
        x: (B_r, ...) this rank's rows; B_r may differ between ranks.

    Returns:
        (sum_r B_r, ...) rows of every rank; ``x`` itself when not distributed. The gradient that reaches
        ``x`` is the sum over ranks of the gradients of their copies of the gathered rows.
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` (e.g. masks or labels) from all ranks in rank order, without autograd.

    Args:
        x: (B_r, ...) this rank's rows.

    Returns:
        (sum_r B_r, ...); ``x`` when not distributed.
    """
    if not is_distributed():
        return x
    sizes = _gather_sizes(x.shape[0], x.device)
    padded = _pad_rows(x.detach(), max(sizes))
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def local_row_offset(local_size: int, device: torch.device) -> int:
    """Index of this rank's first row in the gathered batch (0 when not distributed)."""
    if not is_distributed():
        return 0
    return sum(_gather_sizes(local_size, device)[: dist.get_rank()])
