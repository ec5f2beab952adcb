"""Int8 gradient all-reduce with shared scales and error feedback.

Each rank adds its residual to the bucket, computes the absolute maximum of every scale group, and one
all-reduce(MAX) per bucket gives all ranks the same scales. A scale group is a block of ``block_size``
consecutive entries of one gradient tensor (``granularity="block"``), a whole tensor ("tensor") or the
whole bucket ("bucket"); finer groups cost 4 bytes per group and follow heavy-tailed gradients better. Values are rounded to ``127 // world_size`` signed levels, so the
int8 all-reduce(SUM) of all ranks cannot overflow, then dequantized and averaged. The rounding error stays
in the residual and is added to the next step's gradient (error feedback, Seide et al. 2014; Karimireddy
et al. 2019, "Error Feedback Fixes SignSGD").

Non-finite gradients are never clamped: if any rank sees inf/NaN, its group maximum is sent as +inf, every
rank gets NaN for that bucket (so an AMP grad scaler skips the step) and the residual is left unchanged.
Group offsets and the entry-to-group index are built once per bucket layout, so the hook never waits for
the device (no host synchronisation). Block and tensor scales make the
result independent of DDP's bucket layout, so a resumed run reproduces an uninterrupted one exactly.
"""

from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from fusion.distributed.base import HookState, completed_future, used_by_callback
from fusion.errors import ConfigError


class Int8State(HookState):
    """State of :func:`int8_hook`.

    Args:
        module: the module wrapped by DDP.
        process_group: group to reduce over (None: world).
        granularity: "block" (one scale per ``block_size`` entries of a tensor), "tensor" (one per gradient
            tensor) or "bucket" (one per bucket).
        block_size: entries per scale for ``granularity="block"``.
        error_feedback: keep the quantization error and add it to the next step's gradient.
    """

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None,
                 granularity: Literal["block", "tensor", "bucket"] = "block", block_size: int = 512,
                 error_feedback: bool = True) -> None:
        super().__init__(module, process_group)
        if granularity not in ("block", "tensor", "bucket"):
            raise ConfigError(f"comm_hook.granularity must be 'block', 'tensor' or 'bucket', got {granularity!r}")
        if block_size < 1:
            raise ConfigError(f"comm_hook.block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.levels = 127 // self.world_size
        if self.levels < 1:
            raise ConfigError(f"int8 hook supports at most 127 ranks, got world size {self.world_size}")
        self.granularity = granularity
        self.error_feedback = error_feedback
        self._plans: dict[tuple[int, ...], ScalePlan] = {}

    def plan(self, bucket: dist.GradBucket, layout: tuple[int, ...]) -> "ScalePlan":
        """The scale groups of ``bucket`` (built once per bucket layout, kept on the bucket's device)."""
        if layout not in self._plans:
            buffer = bucket.buffer()
            sizes = [param.numel() for param in bucket.parameters()]
            if sum(sizes) != buffer.numel():
                raise RuntimeError(f"bucket {bucket.index()} is not a dense concatenation of its gradients")
            if self.granularity == "bucket":
                sizes = [buffer.numel()]
            elif self.granularity == "block":
                block = self.block_size
                sizes = [piece for size in sizes for piece in [block] * (size // block) + [size % block] if piece]
            self._plans[layout] = ScalePlan(sizes, buffer.device)
        return self._plans[layout]


class ScalePlan:
    """Scale groups of one bucket layout: offsets for the group maxima and, per entry, its group.

    Precomputed so the hook issues no host synchronisation (``segment_reduce`` with lengths checks them on
    the host; ``repeat_interleave`` rebuilds its index every call).

    Args:
        sizes: entries per scale group, in buffer order (S groups, summing to N).
        device: the bucket's device.
    """

    def __init__(self, sizes: list[int], device: torch.device) -> None:
        self.numel, self.groups = sum(sizes), len(sizes)
        lengths = torch.tensor(sizes, dtype=torch.long)
        self.offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(device)  # (S + 1,)
        self.group_of_entry = (None if self.groups == 1 else  # (N,) int32; None: one scale broadcasts
                               torch.repeat_interleave(torch.arange(self.groups, dtype=torch.int32), lengths)
                               .to(device))

    def group_absmax(self, values: torch.Tensor) -> torch.Tensor:
        """(S,) largest |value| of every group; NaN if a group holds NaN, inf if it holds inf."""
        if self.groups == 1:
            return values.abs().amax().reshape(1)  # amax propagates NaN
        return torch.segment_reduce(values.abs(), "max", offsets=self.offsets, unsafe=True, initial=0.0)

    def expand(self, per_group: torch.Tensor) -> torch.Tensor:
        """(N,) or broadcastable (1,): every entry's value of its group."""
        return per_group if self.group_of_entry is None else per_group.index_select(0, self.group_of_entry)


def int8_hook(state: Int8State, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: int8 all-reduce with agreed scales and error feedback.

    Per bucket: two collectives (max of the S scale groups, then the int8 sum) and no host synchronisation.
    """
    buffer = bucket.buffer()  # (N,)
    world_size, levels = state.world_size, state.levels
    if world_size == 1:
        state.finish_bucket(bucket, compressed=True)
        return completed_future(buffer)
    work_dtype = torch.float64 if buffer.dtype == torch.float64 else torch.float32
    layout = state.residuals.layout(bucket)
    old_residual = state.residuals.get(bucket, layout) if state.error_feedback else None
    if old_residual is not None:
        corrected = torch.add(buffer, old_residual)  # (N,) gradient + residual, in work_dtype
    else:
        corrected = buffer.to(work_dtype, copy=True)  # (N,)

    plan = state.plan(bucket, layout)
    # inf/NaN anywhere becomes an infinite maximum, which the MAX all-reduce hands to every rank
    agreed = plan.group_absmax(corrected).nan_to_num_(nan=float("inf"), posinf=float("inf"))  # (S,)
    # Blocking on purpose: collectives must be issued in the same order on every rank, which gloo does not
    # guarantee for collectives started from future callbacks. On NCCL this only orders the CUDA streams.
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=state.group)
    state.counter.add_allreduce(agreed.numel() * agreed.element_size())
    overflow = agreed.isinf().any()  # () bool, stays on the device
    scale = plan.expand(agreed.div(levels).clamp_(min=torch.finfo(work_dtype).tiny))  # (N,) or (1,)
    quantized = torch.div(corrected, scale).round_().nan_to_num_(0.0, 0.0, 0.0)  # (N,) in [-levels, levels]
    if state.error_feedback:
        residual = torch.addcmul(corrected, quantized, scale, value=-1.0)  # (N,) what was not sent
        keep = old_residual if old_residual is not None else 0.0
        state.residuals.set(bucket, torch.where(overflow, keep, residual), layout)
    summed = quantized.to(torch.int8)  # (N,)
    state.counter.add_allreduce(summed.numel())
    # 1 / world_size on every rank, NaN on all of them if any rank saw inf/NaN (an AMP scaler skips the step)
    factor = agreed.new_full((), 1.0 / world_size).masked_fill_(overflow, float("nan"))  # ()

    def dequantize(future: torch.futures.Future) -> torch.Tensor:
        used_by_callback(scale, factor)
        total = future.value()[0]  # (N,) int8 sum over ranks
        return torch.mul(total, scale).mul_(factor).to(buffer.dtype)  # (N,) average

    future = dist.all_reduce(summed, group=state.group, async_op=True).get_future()
    state.finish_bucket(bucket, compressed=True)
    return future.then(dequantize)
