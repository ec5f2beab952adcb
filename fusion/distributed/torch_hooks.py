"""PyTorch's own DDP hooks (fp32/fp16/bf16 all-reduce, PowerSGD) behind the same state and byte counting.

The hooks themselves come from ``torch.distributed.algorithms.ddp_comm_hooks``; this file only books
their wire bytes and keeps PowerSGD's state checkpointable and robust to DDP's bucket rebuild.
"""

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

from fusion.distributed.base import HookState
from fusion.errors import ConfigError

_ALLREDUCE_DTYPES = {"allreduce": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class AllReduceState(HookState):
    """State of :func:`allreduce_hook`: which of torch's all-reduce hooks to run.

    Args:
        module: the module wrapped by DDP.
        process_group: group to reduce over (None: world).
        kind: "allreduce" (fp32, like DDP without a hook), "fp16" or "bf16".
    """

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None,
                 kind: str = "allreduce") -> None:
        super().__init__(module, process_group)
        if kind not in _ALLREDUCE_DTYPES:
            raise ValueError(f"all-reduce kind must be one of {sorted(_ALLREDUCE_DTYPES)}, got {kind!r}")
        self.kind = kind


def allreduce_hook(state: AllReduceState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Torch's ``allreduce_hook`` / ``fp16_compress_hook`` / ``bf16_compress_hook`` with byte counting."""
    buffer = bucket.buffer()
    dtype = _ALLREDUCE_DTYPES[state.kind]
    itemsize = buffer.element_size() if dtype is None else torch.finfo(dtype).bits // 8
    state.counter.add_allreduce(buffer.numel() * itemsize)
    state.finish_bucket(bucket, compressed=dtype is not None)
    if dtype is None:
        return default_hooks.allreduce_hook(state.process_group, bucket)
    if dtype == torch.float16:
        return default_hooks.fp16_compress_hook(state.process_group, bucket)
    return default_hooks.bf16_compress_hook(state.process_group, bucket)


class PowerSGDHookState(HookState):
    """Wraps torch's :class:`PowerSGDState`; keeps its error and warm-start memory valid across layouts.

    Torch keys PowerSGD's memory by bucket index; DDP's bucket layout changes after the first step and on
    every restart. Here the error memory lives in the layout-aware residual store, and the warm-start
    factors P and Q are re-sliced per parameter when a bucket's layout changes, so a resumed run continues
    exactly. A step with inf/NaN leaves all memory as it was (torch's hook would keep NaN forever).

    Args:
        module: the module wrapped by DDP.
        process_group: group to reduce over (None: world).
        rank: matrix approximation rank.
        warmup_steps: dense all-reduce steps before PowerSGD starts (torch's ``start_powerSGD_iter``,
            at least 2 because DDP rebuilds its buckets after the first step).
        min_compression_rate, use_error_feedback, warm_start, orthogonalization_epsilon, random_seed,
        batch_tensors_with_same_shape: passed to :class:`PowerSGDState`.
    """

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None, rank: int = 1,
                 warmup_steps: int = 10, min_compression_rate: float = 2.0, use_error_feedback: bool = True,
                 warm_start: bool = True, orthogonalization_epsilon: float = 0.0, random_seed: int = 0,
                 batch_tensors_with_same_shape: bool = False) -> None:
        super().__init__(module, process_group)
        if rank < 1:
            raise ConfigError(f"comm_hook.rank must be >= 1, got {rank}")
        if warmup_steps < 2:
            raise ConfigError(f"comm_hook.warmup_steps must be >= 2 (DDP rebuilds buckets after step 1), got "
                             f"{warmup_steps}")
        self.powersgd = powersgd.PowerSGDState(
            process_group, matrix_approximation_rank=rank, start_powerSGD_iter=warmup_steps,
            min_compression_rate=min_compression_rate, use_error_feedback=use_error_feedback,
            warm_start=warm_start, orthogonalization_epsilon=orthogonalization_epsilon, random_seed=random_seed,
            compression_stats_logging_frequency=10**9, batch_tensors_with_same_shape=batch_tensors_with_same_shape)
        # bucket index -> [(parameter position, P length, Q length)] in the order torch lays out P and Q
        self._factor_slices: dict[int, list[tuple[int, int, int]]] = {}
        self._loose_factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # position -> (P, Q) pieces

    def factor_slices(self, bucket: dist.GradBucket) -> list[tuple[int, int, int]]:
        """Where each compressed parameter's P and Q sit in the bucket's memory, and how much it sends.

        Torch groups the compressed matrices by shape (first appearance first), bucket order within a shape.
        """
        ps, groups = self.powersgd, {}
        for position, grad in zip(self.residuals.layout(bucket), bucket.gradients(), strict=True):
            rows = grad.shape[0]
            cols = grad.numel() // max(rows, 1)
            rank = min(rows, cols, ps.matrix_approximation_rank)
            if powersgd._should_compress(rows, cols, rank, ps.min_compression_rate)[0]:
                groups.setdefault((rows, cols), []).append((position, rows * rank, cols * rank))
        return [entry for group in groups.values() for entry in group]

    def count_compressed(self, bucket: dist.GradBucket, slices: list[tuple[int, int, int]]) -> None:
        """Books the three all-reduces of a PowerSGD step (uncompressed tensors, P, Q)."""
        buffer = bucket.buffer()
        compressed = sum(self.residuals._sizes[position] for position, _, _ in slices)
        for numel in (buffer.numel() - compressed, sum(s[1] for s in slices), sum(s[2] for s in slices)):
            self.counter.add_allreduce(numel * buffer.element_size())

    def _spill_factors(self) -> None:
        ps = self.powersgd
        for index, slices in self._factor_slices.items():
            if index not in ps.p_memory_dict:
                continue
            p_memory, q_memory = ps.p_memory_dict.pop(index), ps.q_memory_dict.pop(index)
            p_offset = q_offset = 0
            for position, p_len, q_len in slices:
                self._loose_factors[position] = (p_memory[p_offset:p_offset + p_len],
                                                 q_memory[q_offset:q_offset + q_len])
                p_offset, q_offset = p_offset + p_len, q_offset + q_len
        self._factor_slices.clear()

    def prepare_factors(self, bucket: dist.GradBucket) -> list[tuple[int, int, int]]:
        """Makes ``p/q_memory_dict[bucket.index()]`` match the bucket's current layout (or drops it)."""
        ps, index, slices = self.powersgd, bucket.index(), self.factor_slices(bucket)
        if self._factor_slices.get(index) == slices:
            return slices
        self._spill_factors()
        pieces = [self._loose_factors.pop(position, None) for position, _, _ in slices]
        self._factor_slices[index] = slices
        if slices and all(piece is not None for piece in pieces):
            buffer = bucket.buffer()
            ps.p_memory_dict[index] = torch.cat([p for p, _ in pieces]).to(buffer.device, buffer.dtype)
            ps.q_memory_dict[index] = torch.cat([q for _, q in pieces]).to(buffer.device, buffer.dtype)
        return slices

    def state_dict(self) -> dict[str, Any]:
        """Base state plus PowerSGD's step, random generator and warm-start factors (CPU tensors)."""
        ps = self.powersgd
        self._spill_factors()
        _, keys, position, has_gauss, cached_gaussian = ps.rng.get_state()
        factors = {position: {"p": p.detach().cpu().clone(), "q": q.detach().cpu().clone()}
                   for position, (p, q) in self._loose_factors.items()}
        return {**super().state_dict(), "iter": ps.iter, "factors": factors,
                "rng": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output."""
        super().load_state_dict(state)
        ps = self.powersgd
        ps.iter = int(state["iter"])
        rng = state["rng"]
        ps.rng.set_state(("MT19937", rng["keys"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"],
                          rng["cached_gaussian"]))
        ps.error_dict.clear()
        ps.p_memory_dict.clear()
        ps.q_memory_dict.clear()
        self._factor_slices.clear()
        self._loose_factors = {int(position): (entry["p"].clone(), entry["q"].clone())
                               for position, entry in state["factors"].items()}


class _ScalarsAsVectors:
    """A GradBucket whose 0-d gradients read as 1-element vectors (torch's PowerSGD reshapes by ``shape[0]``)."""

    def __init__(self, bucket: dist.GradBucket) -> None:
        self._bucket = bucket

    def buffer(self) -> torch.Tensor:
        return self._bucket.buffer()

    def index(self) -> int:
        return self._bucket.index()

    def is_last(self) -> bool:
        return self._bucket.is_last()

    def parameters(self) -> list[torch.Tensor]:
        return self._bucket.parameters()

    def gradients(self) -> list[torch.Tensor]:
        return [grad.view(1) if grad.dim() == 0 else grad for grad in self._bucket.gradients()]  # views


def powersgd_hook(state: PowerSGDHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Torch's ``powerSGD_hook`` with byte counting, layout-checked memory and inf/NaN-safe state."""
    ps, index = state.powersgd, bucket.index()
    if any(grad.dim() == 0 for grad in bucket.gradients()):  # e.g. a learnable logit scale
        bucket = _ScalarsAsVectors(bucket)
    if ps.iter < ps.start_powerSGD_iter:
        state.counter.add_allreduce(bucket.buffer().numel() * bucket.buffer().element_size())
        state.finish_bucket(bucket, compressed=False)
        return powersgd.powerSGD_hook(ps, bucket)

    slices = state.prepare_factors(bucket)
    old_residual = state.residuals.get(bucket) if ps.use_error_feedback else None
    if old_residual is None:
        ps.error_dict.pop(index, None)
    else:
        ps.error_dict[index] = old_residual.clone()  # torch adds it to the bucket in place
    old_factors = ((ps.p_memory_dict[index].clone(), ps.q_memory_dict[index].clone())
                   if index in ps.p_memory_dict else None)
    state.count_compressed(bucket, slices)
    state.finish_bucket(bucket, compressed=True)
    future = powersgd.powerSGD_hook(ps, bucket)
    if dist.get_backend(state.group) == "gloo":
        # torch's hook starts its P and Q all-reduces from future callbacks; gloo would run them in a
        # rank-dependent order across buckets, so finish this bucket before DDP starts the next one.
        future.wait()

    def keep_state_finite(done: torch.futures.Future) -> torch.Tensor:
        output = done.value()
        overflow = ~torch.isfinite(output).all()
        if ps.use_error_feedback:
            error = ps.error_dict[index]
            keep = old_residual if old_residual is not None else torch.zeros_like(error)
            state.residuals.set(bucket, torch.where(overflow, keep, error))
        if old_factors is not None and index in ps.p_memory_dict:
            ps.p_memory_dict[index] = torch.where(overflow, old_factors[0], ps.p_memory_dict[index])
            ps.q_memory_dict[index] = torch.where(overflow, old_factors[1], ps.q_memory_dict[index])
        elif index in ps.p_memory_dict:  # fresh factors from a non-finite step: draw new ones next time
            bad = bool(overflow)
            if bad:
                ps.p_memory_dict.pop(index)
                ps.q_memory_dict.pop(index)
        return output

    return future.then(keep_state_finite)
