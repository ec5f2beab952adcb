"""Model cost: parameter count, FLOPs per forward pass and peak memory of one forward pass."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (packed int8 weights of quantized layers are not parameters)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call of ``run`` counted by ``torch.utils.flop_counter`` (a multiply-add counts 2).

    Only operators the counter knows (matmul, convolution, attention, ...) are counted; elementwise ops
    are not, which is the usual convention.
    """
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def _storages(tree: object) -> list[torch.UntypedStorage]:
    leaves, _ = tree_flatten(tree)
    return [leaf.untyped_storage() for leaf in leaves if isinstance(leaf, torch.Tensor)]


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created by operators while active, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {s.data_ptr() for s in _storages((args, kwargs))}
        for storage in _storages(out):
            key = storage.data_ptr()
            if key in inputs or key in self._seen or storage.device.type == "meta":
                continue  # a view or in-place result, or already counted
            self._seen.add(key)
            self.live += storage.nbytes()
            weakref.finalize(storage, self._release, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def tensor_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers of ``model``."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def peak_memory_bytes(run: Callable[[], object], device: torch.device | str, resident_bytes: int) -> tuple[int, str]:
    """Peak memory of one call of ``run``, with the method used.

    CUDA: ``torch.cuda.max_memory_allocated`` over the call (includes weights and inputs already resident).
    CPU: ``resident_bytes`` (weights and inputs, passed in) plus the peak of the bytes of tensors allocated by
    operators during the call, tracked with a dispatch mode (allocator caches and Python objects excluded).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), "cuda.max_memory_allocated"
    tracker = _LiveTensorBytes()
    with tracker:
        result = run()
    del result
    return resident_bytes + tracker.peak, "weights+inputs + peak live tensor bytes (dispatch mode)"
