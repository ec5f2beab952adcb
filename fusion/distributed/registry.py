"""Name -> (state, hook) for every gradient communication hook behind ``comm_hook=...``.

A hook's options are its state's ``config_class`` dataclass (top-k) or its state constructor's
keyword arguments (the others); either way :func:`hook_defaults` lists them with their defaults, which the
Hydra group ``recipes/comm_hook/<name>.yaml`` mirrors.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch.distributed as dist
from torch import nn

from fusion.distributed.base import HookState
from fusion.distributed.int8 import Int8State, int8_hook
from fusion.distributed.topk import TopKState, topk_hook
from fusion.distributed.torch_hooks import AllReduceState, PowerSGDHookState, allreduce_hook, powersgd_hook
from fusion.errors import ConfigError

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


def hook_defaults(name: str) -> dict[str, Any]:
    """The options hook ``name`` takes, with their defaults, in declaration order."""
    state, _, fixed = _HOOKS[name]
    if state.config_class is not None:
        return {field.name: field.default for field in dataclasses.fields(state.config_class)}
    skip = {"self", "module", "process_group", *fixed}
    return {arg: param.default for arg, param in inspect.signature(state.__init__).parameters.items()
            if arg not in skip}


def hook_arguments(name: str) -> tuple[str, ...]:
    """The option names accepted by hook ``name``."""
    return tuple(hook_defaults(name))


def check_hook(name: str, args: Mapping[str, Any] | None = None) -> None:
    """Raises ValueError for an unknown hook name or an option the hook does not take."""
    if name not in _HOOKS:
        raise ConfigError(f"comm_hook must be one of none|{'|'.join(HOOK_NAMES)}, got {name!r}")
    accepted = hook_arguments(name)
    unknown = sorted(set(args or {}) - set(accepted))
    if unknown:
        raise ConfigError(f"comm_hook options {unknown} not accepted by comm_hook={name}; it takes {list(accepted)}")


def hook_options(name: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option of hook ``name``: the defaults updated with ``args``, checked (a bad value raises here)."""
    check_hook(name, args)
    state, _, _ = _HOOKS[name]
    options = hook_defaults(name) | dict(args or {})
    if state.config_class is not None:
        return dataclasses.asdict(state.config_class(**options))  # __post_init__ checks the values
    return options


def make_comm_hook(name: str, module: nn.Module, process_group: dist.ProcessGroup | None = None,
                   args: Mapping[str, Any] | None = None) -> tuple[HookState, CommHook]:
    """Builds the state and hook function to pass to ``DistributedDataParallel.register_comm_hook``.

    Args:
        name: one of :data:`HOOK_NAMES` ("allreduce" is an uncompressed fp32 all-reduce with byte counting).
        module: the module wrapped by DDP (``ddp.module``).
        process_group: group to reduce over (None: world).
        args: hook options, e.g. ``{"ratio": 0.001, "warmup_steps": 50}`` for topk (missing ones: defaults).
    """
    check_hook(name, args)
    state, hook, fixed = _HOOKS[name]
    if state.config_class is not None:
        return state(module, process_group, state.config_class(**(args or {}))), hook
    return state(module, process_group, **fixed, **(args or {})), hook
