"""Name -> (state, hook) for every gradient communication hook behind ``comm_hook=...``."""

import inspect
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from torch import nn

from fusion.distributed.base import HookState
from fusion.distributed.int8 import Int8State, int8_hook
from fusion.distributed.topk import TopKState, topk_hook
from fusion.distributed.torch_hooks import AllReduceState, PowerSGDHookState, allreduce_hook, powersgd_hook

CommHook = Callable[[Any, dist.GradBucket], Any]

_HOOKS: dict[str, tuple[type[HookState], CommHook, dict[str, Any]]] = {
    "allreduce": (AllReduceState, allreduce_hook, {"kind": "allreduce"}),
    "fp16": (AllReduceState, allreduce_hook, {"kind": "fp16"}),
    "bf16": (AllReduceState, allreduce_hook, {"kind": "bf16"}),
    "int8": (Int8State, int8_hook, {}),
    "topk": (TopKState, topk_hook, {}),
    "powersgd": (PowerSGDHookState, powersgd_hook, {}),
}
HOOK_NAMES = tuple(_HOOKS)


def hook_arguments(name: str) -> tuple[str, ...]:
    """The ``comm_hook_args`` keys accepted by hook ``name``."""
    state_class, _, fixed = _HOOKS[name]
    skip = {"self", "module", "process_group", *fixed}
    return tuple(arg for arg in inspect.signature(state_class.__init__).parameters if arg not in skip)


def check_hook(name: str, args: dict[str, Any] | None = None) -> None:
    """Raises ValueError for an unknown hook name or an argument the hook does not take."""
    if name not in _HOOKS:
        raise ValueError(f"comm_hook must be one of none|{'|'.join(HOOK_NAMES)}, got {name!r}")
    accepted = hook_arguments(name)
    unknown = sorted(set(args or {}) - set(accepted))
    if unknown:
        raise ValueError(f"comm_hook_args {unknown} not accepted by comm_hook={name}; it takes {list(accepted)}")


def make_comm_hook(name: str, module: nn.Module, process_group: dist.ProcessGroup | None = None,
                   args: dict[str, Any] | None = None) -> tuple[HookState, CommHook]:
    """Builds the state and hook function to pass to ``DistributedDataParallel.register_comm_hook``.

    Args:
        name: one of :data:`HOOK_NAMES` ("allreduce" is an uncompressed fp32 all-reduce with byte counting).
        module: the module wrapped by DDP (``ddp.module``).
        process_group: group to reduce over (None: world).
        args: hook options, e.g. ``{"ratio": 0.001, "warmup_steps": 50}`` for topk.
    """
    check_hook(name, args)
    state_class, hook, fixed = _HOOKS[name]
    return state_class(module, process_group, **fixed, **(args or {})), hook
