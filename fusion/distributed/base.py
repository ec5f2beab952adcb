"""State shared by the gradient-compression hooks: process group, step counter, bytes, residuals."""

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fusion.distributed.accounting import WireCounter
from fusion.distributed.residuals import ResidualStore


class HookState:
    """Base state passed to a DDP communication hook as its ``state`` argument.

    ``step`` counts synchronising backward passes: DDP runs the hook only when gradients are reduced
    (not inside ``no_sync`` during gradient accumulation), so it advances once per optimizer step.

    ``config_class``: the typed options dataclass the state takes as ``config`` (None: options are constructor
    keywords).

    Args:
        module: the module wrapped by DDP (its ``parameters()`` order keys the residuals).
        process_group: group to reduce over; None means the default (world) group.
    """

    config_class: type | None = None

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None) -> None:
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.step = 0
        self.counter = WireCounter(self.world_size)
        self.residuals = ResidualStore({id(param): i for i, param in enumerate(module.parameters())})

    @property
    def group(self) -> dist.ProcessGroup:
        """The process group collectives run on."""
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def finish_bucket(self, bucket: dist.GradBucket, compressed: bool) -> None:
        """Books the fp32 reference for ``bucket``; closes the step after the last bucket.

        Hooks call it after counting the bucket's own collectives and after reading ``step``.
        """
        self.counter.add_bucket(bucket.buffer().numel(), compressed)
        if bucket.is_last():
            self.counter.end_step()
            self.step += 1

    def state_dict(self) -> dict[str, Any]:
        """Step counter, byte totals and error-feedback residuals (tensors on the CPU)."""
        return {"step": self.step, "counter": self.counter.state_dict(),
                "residuals": self.residuals.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""
        self.step = int(state["step"])
        self.counter.load_state_dict(state["counter"])
        self.residuals.load_state_dict(state["residuals"])


def completed_future(tensor: torch.Tensor) -> torch.futures.Future:
    """A future already holding ``tensor`` (for hooks that do no communication, e.g. one rank)."""
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(tensor)
    return future


def used_by_callback(*items: Any) -> None:
    """Marks the CUDA tensors in ``items`` as used by the current stream; call it first in a future callback.

    A hook's callback runs on a stream of its own, not on the stream that made the tensors it reads (those come
    from the hook's body, before the collective). When the callback lets go of them, the caching allocator
    may hand their memory to new tensors of the making stream at once, before the callback's kernels that
    read them have run; recording the callback's stream on them defers that reuse until those kernels are
    done. ``items``: tensors, None, and dataclasses or lists/tuples holding them. No-op for CPU tensors.
    """
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.is_cuda:
                item.record_stream(torch.cuda.current_stream(item.device))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            used_by_callback(*(getattr(item, field.name) for field in dataclasses.fields(item)))
        elif isinstance(item, (list, tuple)):
            used_by_callback(*item)
