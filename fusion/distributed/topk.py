"""Top-k gradient sparsification with error feedback (Deep Gradient Compression style).

Lin et al. 2018, "Deep Gradient Compression". Each rank adds its residual to the bucket, keeps the
``k = ceil(density * N)`` entries of largest magnitude, and sends them as compact (value, int32 index) pairs
packed into one byte buffer. Indices differ across ranks, so the pairs are all-gathered (not all-reduced) and
scattered into a dense average. Everything not sent stays in the residual. The first ``warmup_steps`` steps
are dense fp32 all-reduces. Then, over ``density_warmup_steps``, the sent fraction starts at 25 % and shrinks
4x per stage (25 %, 6.25 %, 1.56 %, ...) down to ``ratio``, the stages spread evenly over those steps (the
paper's exponential sparsity warm-up). Local gradient clipping and momentum correction from the paper are not
applied: the optimizer keeps its own momentum (docs/experiments/topk.md has what was tried and measured).

If any rank's gradient holds inf/NaN, that rank sends NaN values, so every rank's bucket carries NaN to the
optimizer step (an AMP grad scaler then skips it), and every rank keeps its residual as it was.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from fusion.distributed.base import HookState, completed_future, used_by_callback
from fusion.errors import ConfigError

VALUE_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TopKConfig:
    """Options of :func:`topk_hook` (``comm_hook=topk comm_hook.<option>=...``).

    The defaults are those the benchmarks recommend (docs/experiments/topk.md, "default configuration").
    """

    ratio: float = 0.01
    """Fraction of each bucket's (or tensor's) entries sent per step once warmed up, in (0, 1]."""
    warmup_steps: int = 10
    """Dense fp32 all-reduce steps before sparsification starts."""
    density_warmup_steps: int = 48
    """Steps after the dense ones over which the sent fraction falls 4x per stage from 25 % to ``ratio``."""
    value_dtype: Literal["fp16", "bf16", "fp32", "fp64"] = "fp16"
    """Wire type of the values sent; their rounding error stays in the residual."""
    granularity: Literal["bucket", "tensor"] = "bucket"
    """"bucket": the k largest of the whole bucket; "tensor": ``ceil(density * n)`` of every gradient tensor
    (independent of DDP's bucket layout, so a resumed run reproduces an uninterrupted one exactly)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"comm_hook.ratio must be in (0, 1], got {self.ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"comm_hook.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.density_warmup_steps < 0:
            raise ConfigError(f"comm_hook.density_warmup_steps must be >= 0, got {self.density_warmup_steps}")
        if self.value_dtype not in VALUE_DTYPES:
            raise ConfigError(f"comm_hook.value_dtype must be one of {sorted(VALUE_DTYPES)}, got {self.value_dtype!r}")
        if self.granularity not in ("bucket", "tensor"):
            raise ConfigError(f"comm_hook.granularity must be 'bucket' or 'tensor', got {self.granularity!r}")


class TopKState(HookState):
    """State of :func:`topk_hook`: the options, the step counter and the error-feedback residuals.

    Args:
        module: the module wrapped by DDP.
        process_group: group to reduce over (None: world).
        config: the hook's options (None: the defaults).
    """

    config_class = TopKConfig

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None,
                 config: TopKConfig | None = None) -> None:
        super().__init__(module, process_group)
        self.config = config if config is not None else self.config_class()
        self.value_dtype = VALUE_DTYPES[self.config.value_dtype]
        self.warmup_densities = []  # 0.25, 0.0625, ... while above ratio
        density = 0.25
        while density > self.config.ratio:
            self.warmup_densities.append(density)
            density /= 4

    def density(self) -> float:
        """Fraction sent at the current step (``ratio`` once the density warm-up is over)."""
        into, stages = self.step - self.config.warmup_steps, self.config.density_warmup_steps
        if into < 0 or into >= stages or not self.warmup_densities:
            return self.config.ratio
        return self.warmup_densities[into * len(self.warmup_densities) // stages]

    def k(self, numel: int) -> int:
        """Entries each rank sends for ``numel`` gradients at the current step."""
        return min(numel, max(1, math.ceil(self.density() * numel)))

    def select(self, bucket: dist.GradBucket, scores: torch.Tensor) -> torch.Tensor:
        """Indices of the entries to send: the k highest ``scores`` ((N,)) of the bucket, or of each tensor."""
        if self.config.granularity == "bucket":
            return torch.topk(scores, self.k(scores.numel()), sorted=False).indices  # (k,)
        picked, offset = [], 0
        for param in bucket.parameters():
            size = param.numel()
            top = torch.topk(scores[offset:offset + size], self.k(size), sorted=False).indices
            picked.append(top + offset)
            offset += size
        return torch.cat(picked)  # (k,)


def dense_average(state: TopKState, buffer: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    """All-reduced mean of ``buffer`` ((N,), divided in place), counted; ``buffer`` itself on one rank."""
    if state.world_size == 1:
        return completed_future(buffer)
    state.counter.add_allreduce(buffer.numel() * buffer.element_size())
    future = dist.all_reduce(buffer.div_(state.world_size), group=state.group, async_op=True).get_future()
    return future.then(lambda fut: fut.value()[0])


def sparse_average(state: TopKState, bucket: dist.GradBucket, fresh: torch.Tensor,
                   commit: Callable[[torch.Tensor], None] | None = None) -> torch.futures.Future[torch.Tensor]:
    """Sends the top-k of ``fresh + residual``, keeps the rest; the future holds every rank's average.

    Args:
        state: the hook state (options, residuals, counter).
        bucket: the DDP bucket; the result has its buffer's length and dtype.
        fresh: (N,) this step's contribution (>= fp32, not changed): the gradient, or what a derived hook sends.
        commit: called in the callback with () bool "some rank's values were not finite", to store derived state.
    """
    buffer = bucket.buffer()  # (N,)
    numel, world_size = buffer.numel(), state.world_size
    work_dtype = fresh.dtype
    old_residual = state.residuals.get(bucket)
    corrected = fresh + old_residual if old_residual is not None else fresh.clone()  # (N,)
    indices = state.select(bucket, corrected.abs())  # (k,)
    k = indices.numel()
    values = corrected[indices].to(state.value_dtype)  # (k,) as sent
    residual = corrected.index_put((indices,), corrected[indices] - values.to(work_dtype))  # (N,)
    keep = old_residual if old_residual is not None else torch.zeros_like(residual)
    overflow = ~torch.isfinite(corrected).all()
    values = values + torch.where(overflow, float("nan"), 0.0).to(state.value_dtype)

    value_bytes = values.element_size()
    packed = torch.cat([values.view(torch.uint8), indices.to(torch.int32).view(torch.uint8)])  # (k * (v + 4),)
    gathered = packed.new_empty(world_size * packed.numel())  # (W * k * (v + 4),)
    state.counter.add_allgather(packed.numel())

    def scatter_average(future: torch.futures.Future) -> torch.Tensor:
        future.value()  # raises if the collective failed
        used_by_callback(gathered, keep, residual)
        rows = gathered.view(world_size, -1)  # (W, k * (v + 4))
        all_values = rows[:, : k * value_bytes].contiguous().view(state.value_dtype)  # (W, k)
        all_indices = rows[:, k * value_bytes:].contiguous().view(torch.int32).long()  # (W, k)
        any_overflow = ~torch.isfinite(all_values).all()  # a skipped step consumes no residual anywhere
        state.residuals.set(bucket, torch.where(any_overflow, keep, residual))
        if commit is not None:
            commit(any_overflow)
        dense = torch.zeros(numel, dtype=work_dtype, device=buffer.device)  # (N,)
        for rank in range(world_size):  # fixed order: identical float sums on every rank
            dense.index_add_(0, all_indices[rank], all_values[rank].to(work_dtype))
        return dense.div_(world_size).to(buffer.dtype)

    work = dist.all_gather_into_tensor(gathered, packed, group=state.group, async_op=True)
    state.finish_bucket(bucket, compressed=True)
    return work.get_future().then(scatter_average)


def topk_hook(state: TopKState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-gather of the top-k (value, index) pairs, with error feedback."""
    buffer = bucket.buffer()  # (N,)
    if state.step < state.config.warmup_steps:
        future = dense_average(state, buffer)
        state.finish_bucket(bucket, compressed=False)
        return future
    work_dtype = torch.float64 if buffer.dtype == torch.float64 else torch.float32
    return sparse_average(state, bucket, buffer.to(work_dtype))
