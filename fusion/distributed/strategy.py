"""Lightning DDP strategy that trains through the compressed-gradient hooks on CPU (gloo) and GPU (NCCL).

Lightning's own ``DDPStrategy`` registers comm hooks only on CUDA and keeps no hook state in checkpoints.
:class:`CompressedDDPStrategy` registers on any device, logs wire bytes and the compression ratio against
an fp32 all-reduce every optimizer step (``comm/bytes_per_step``, ``comm/compression``), stores every
rank's hook state (error-feedback residuals, PowerSGD memory, step counter) in full checkpoints so a
resumed run continues exactly.
"""

import logging
from collections.abc import Mapping
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.nn.parallel import DistributedDataParallel

from fusion.distributed.base import HookState
from fusion.distributed.registry import hook_options, make_comm_hook
from fusion.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "comm_hook"


class CompressedDDPStrategy(DDPStrategy):
    """``DDPStrategy`` with a gradient-compression communication hook.

    Args:
        comm_hook: a name of :data:`fusion.distributed.registry.HOOK_NAMES` (allreduce|fp16|bf16|int8|topk|
            powersgd).
        comm_hook_args: options of that hook, e.g. ``{"ratio": 0.001, "warmup_steps": 50}`` (missing ones:
            the hook's defaults).
        **kwargs: passed to ``DDPStrategy`` (``find_unused_parameters``, ``start_method``, ...).
    """

    def __init__(self, comm_hook: str, comm_hook_args: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        options = hook_options(comm_hook, comm_hook_args)
        super().__init__(**kwargs)
        self.comm_hook = comm_hook
        self.comm_hook_args = options  # every option, defaults included (stored in checkpoints as "args")
        self.hook_state: HookState | None = None
        self._pending_state: dict[str, Any] | None = None

    def _register_ddp_hooks(self) -> None:
        assert isinstance(self.model, DistributedDataParallel)
        self.hook_state, hook = make_comm_hook(self.comm_hook, self.model.module, None, self.comm_hook_args)
        if self._pending_state is not None:
            self.hook_state.load_state_dict(self._pending_state)
            self._pending_state = None
        self.model.register_comm_hook(self.hook_state, hook)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        output = super().optimizer_step(*args, **kwargs)
        module = self.lightning_module
        if self.hook_state is not None and module is not None and module._current_fx_name == "optimizer_step":
            counter = self.hook_state.counter
            if counter.last_step_bytes > 0:
                module.log("comm/bytes_per_step", counter.last_step_bytes, on_step=True, on_epoch=False)
                module.log("comm/compression", counter.last_step_fp32_bytes / counter.last_step_bytes,
                           on_step=True, on_epoch=False)
        return output

    def comm_summary(self) -> dict[str, float]:
        """Bytes per step and compression so far (``comm/...`` keys), empty before training."""
        if self.hook_state is None:
            return {}
        return {f"comm/{key}": value for key, value in self.hook_state.counter.summary().items()}

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Adds every rank's hook state to full (not weights-only) checkpoints, then saves on rank 0."""
        if self.hook_state is not None and "optimizer_states" in checkpoint:
            local = self.hook_state.state_dict()
            gathered: list[Any] | None = [None] * self.world_size if self.is_global_zero else None
            if dist.is_available() and dist.is_initialized() and self.world_size > 1:
                dist.gather_object(local, gathered, dst=0)
            elif gathered is not None:
                gathered[0] = local
            if self.is_global_zero:
                checkpoint[CHECKPOINT_KEY] = {"name": self.comm_hook, "args": self.comm_hook_args,
                                              "world_size": self.world_size, "ranks": gathered}
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Loads a checkpoint and takes this rank's hook state from it (applied when the hook exists)."""
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            return checkpoint
        if saved_hook_name(saved) != self.comm_hook:
            log.warning("checkpoint was trained with comm_hook=%s, now %s: hook state not restored",
                        saved_hook_name(saved), self.comm_hook)
        elif saved["world_size"] != self.world_size:
            log.warning("checkpoint hook state is for %d ranks, now %d: residuals start from zero",
                        saved["world_size"], self.world_size)
        else:
            state = saved["ranks"][self.global_rank]
            if self.hook_state is not None:
                self.hook_state.load_state_dict(state)
            else:
                self._pending_state = state
        return checkpoint


def saved_hook_name(saved: Mapping[str, Any]) -> str:
    """The hook a checkpoint's hook state belongs to.

    Top-k saved with the former ``local_adam`` option belongs to the ``local_adam`` hook, since removed: its
    residuals hold Adam directions, not gradients, so plain top-k does not restore them.
    """
    if saved["name"] == "topk" and (saved.get("args") or {}).get("local_adam") is True:
        return "local_adam"
    return saved["name"]


def build_strategy(comm_hook: Mapping[str, Any] | str | None, strategy: Any) -> Any:
    """What to pass as ``lightning.Trainer(strategy=...)`` for the config's ``comm_hook`` group.

    Args:
        comm_hook: the resolved ``comm_hook`` config, ``{"name": "topk", "ratio": 0.01, ...}`` (recipes/comm_hook/
            <name>.yaml), or just a name; "none", ``{"name": "none"}`` or None: no hook.
        strategy: the user's ``trainer.strategy``: a registered DDP name ("ddp", "ddp_spawn",
            "ddp_find_unused_parameters_true", ...), a ``DDPStrategy`` instance, or "auto" (taken as "ddp").

    Returns:
        ``strategy`` unchanged for no hook, else a :class:`CompressedDDPStrategy`.

    Raises:
        ValueError: unknown hook, option or option value, or a hook requested with a non-DDP strategy.
    """
    if comm_hook is None or isinstance(comm_hook, str):
        name, args = comm_hook, {}
    else:
        args = dict(comm_hook)
        name = args.pop("name", None)
        if name is None:
            raise ConfigError(f"comm_hook needs a name (comm_hook=none|topk|...), got {dict(comm_hook)}")
    if name in (None, "none"):
        return strategy
    hook_options(name, args)  # raises for an unknown hook, option or value before any process starts
    if type(strategy) in (DDPStrategy, CompressedDDPStrategy):  # subclasses such as DeepSpeed are not DDP
        kwargs = dict(strategy._ddp_kwargs, start_method=strategy._start_method,
                      process_group_backend=strategy._process_group_backend, timeout=strategy._timeout)
        return CompressedDDPStrategy(name, args, **kwargs)
    if strategy == "auto":
        strategy = "ddp"
    entry = StrategyRegistry[strategy] if isinstance(strategy, str) and strategy in StrategyRegistry else None
    if entry is None or entry["strategy"] is not DDPStrategy:
        raise ConfigError(f"comm_hook={name} needs a DDP strategy (trainer.strategy=ddp, ddp_spawn, ...), "
                         f"got trainer.strategy={strategy!r}")
    return CompressedDDPStrategy(name, args, **entry["init_params"])
