"""Local Adam: top-k exchange of each rank's Adam step, with error feedback. EXPERIMENTAL.

Not in the Deep Gradient Compression paper; in the spirit of 1-bit Adam (Tang et al. 2021), which also
compresses an Adam-preconditioned quantity with error feedback. Under AdamW, top-k's accumulated values move
their weights by only a few learning-rate steps however long they waited in the residual (Adam divides each
entry by its own gradient RMS). So each rank runs Adam's moment estimates itself, per entry, on its local
gradient g: ``m <- b1 * m + (1 - b1) * g``, ``v <- b2 * v + (1 - b2) * g ** 2``, takes Adam's direction
``d = m_hat / (sqrt(v_hat) + eps)`` (bias-corrected per parameter), and top-k (:mod:`fusion.distributed.topk`)
exchanges d with error feedback on d. The sent values add up to every entry's Adam steps, only later, so the
optimizer must apply them as they are: plain SGD without momentum (``model.optimizer=sgd model.momentum=0``,
checked by :class:`~fusion.distributed.strategy.CompressedDDPStrategy`); its weight decay is then AdamW's
decoupled one. During the dense warm-up the hook all-reduces d, so with every entry sent it equals AdamW
when the ranks' gradients agree. Costs two floats per gradient entry.

Experimental: verified on the CPU (gloo) only. On CUDA (NCCL) it reached NaN before ``used_by_callback``
existed; training refuses it on a GPU until ``benchmarks/ddp/hooks_cuda_check.py`` passes there. Measured in
docs/experiments/topk.md: −1.36 ± 0.73 points at 0.1 % in 6 epochs, −0.55 ± 0.37 in 12 (8 seeds).
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fusion.distributed.base import SGD_WITHOUT_MOMENTUM, used_by_callback
from fusion.distributed.moments import GradientMoment
from fusion.distributed.topk import TopKConfig, TopKState, dense_average, sparse_average
from fusion.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class LocalAdamConfig(TopKConfig):
    """Options of :func:`local_adam_hook`: top-k's, plus Adam's (``comm_hook=local_adam comm_hook.<option>=...``)."""

    ratio: float = 0.001
    """Fraction of each bucket's (or tensor's) entries sent per step once warmed up, in (0, 1]."""
    density_warmup_steps: int = 96
    """Steps after the dense ones over which the sent fraction falls 4x per stage from 25 % to ``ratio``."""
    beta1: float = 0.9
    """Decay of Adam's first moment m, in [0, 1)."""
    beta2: float = 0.999
    """Decay of Adam's second moment v, in [0, 1)."""
    eps: float = 1e-8
    """Adam's eps, > 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"comm_hook.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0.0:
            raise ConfigError(f"comm_hook.eps must be > 0, got {self.eps}")


class LocalAdamState(TopKState):
    """State of :func:`local_adam_hook`: top-k's, plus both Adam moments per gradient entry.

    Args:
        module: the module wrapped by DDP.
        process_group: group to reduce over (None: world).
        config: the hook's options (None: the defaults).
    """

    config_class = LocalAdamConfig
    required_optimizer = SGD_WITHOUT_MOMENTUM
    devices = ("cpu",)  # NaN on CUDA before used_by_callback existed; not verified there since

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None,
                 config: LocalAdamConfig | None = None) -> None:
        super().__init__(module, process_group, config)
        index = self.residuals.param_index
        self.moments = (GradientMoment(index, self.config.beta1, power=1),
                        GradientMoment(index, self.config.beta2, power=2))

    def state_dict(self) -> dict[str, Any]:
        """Top-k's state plus both moments (``adam_moments``: [m, v], per parameter, on the CPU)."""
        return {**super().state_dict(), "adam_moments": [moment.state_dict() for moment in self.moments]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (moments from zero if the state has none)."""
        super().load_state_dict(state)
        saved = state.get("adam_moments")
        if saved is None:
            log.warning("local_adam: the hook state holds no Adam moments (saved by plain topk?); they start "
                        "from zero")
            saved = [{"means": {}, "weights": {}}] * 2
        for moment, moment_state in zip(self.moments, saved, strict=True):
            moment.load_state_dict(moment_state)


def local_adam_hook(state: LocalAdamState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: every rank's Adam direction, averaged densely or through top-k."""
    buffer = bucket.buffer()  # (N,) this rank's gradient
    first, second = (moment.updated(bucket, buffer) for moment in state.moments)
    direction = first.corrected().div_(second.rms().add_(state.config.eps))  # (N,) m_hat / (sqrt(v_hat) + eps)

    def commit(nonfinite: torch.Tensor) -> None:  # in a callback; a skipped step leaves the moments as they were
        used_by_callback(first, second)
        state.moments[0].commit(bucket, first, nonfinite)
        state.moments[1].commit(bucket, second, nonfinite)

    if state.step >= state.config.warmup_steps:
        return sparse_average(state, bucket, direction, commit)
    future = dense_average(state, buffer.copy_(direction))  # the optimizer (SGD) applies mean(d)
    state.finish_bucket(bucket, compressed=False)

    def keep_moments(future: torch.futures.Future) -> torch.Tensor:
        average = future.value()  # (N,) inf/NaN if any rank's gradient held them
        commit(~torch.isfinite(average).all())
        return average

    return future.then(keep_moments)
