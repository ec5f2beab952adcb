"""Running means of each gradient entry (or of its square), kept through DDP bucket rebuilds and checkpoints.

Used by the ``local_adam`` hook (both of Adam's moments). Per entry, with the
local gradient g, decay beta and power p (1 or 2): ``mean_t = beta * mean_(t-1) + (1 - beta) * g_t ** p`` and,
bias-corrected as in Adam (Kingma & Ba 2015), ``mean_t / (1 - beta ** t)`` (for p = 2 its square root is the
entry's gradient RMS). The means live in a :class:`ResidualStore` (flat per bucket, per
parameter in checkpoints), the bias-correction weights ``1 - beta ** t`` in a second one that holds one value
per parameter, so every parameter keeps its own update count (a bucket whose step overflowed skips it).
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fusion.distributed.residuals import ResidualStore


@dataclass
class MomentUpdate:
    """One bucket's statistic with this step's gradient folded in, not stored yet (see ``commit``)."""

    mean: torch.Tensor  # (N,) moving average of gradients (or their squares), not bias-corrected
    weight: torch.Tensor  # (P,) 1 - beta ** updates, per parameter of the bucket
    old_mean: torch.Tensor | None  # (N,) before this step; None: never updated
    old_weight: torch.Tensor | None  # (P,) before this step; None: never updated
    sizes: torch.Tensor  # (P,) int64 gradient entries of each parameter, on the bucket's device

    def corrected(self) -> torch.Tensor:
        """(N,) bias-corrected moving average of every entry."""
        weight = torch.repeat_interleave(self.weight, self.sizes, output_size=self.mean.numel())  # (N,)
        return self.mean.div(weight)

    def rms(self) -> torch.Tensor:
        """(N,) bias-corrected root mean square of every entry's gradient (for a mean of squares)."""
        return self.corrected().sqrt_()


class GradientMoment:
    """Bias-corrected moving average of local gradients (power 1) or their squares (power 2), per entry,
    stored per parameter.

    Args:
        param_index: ``id(parameter) -> position`` in ``module.parameters()`` (as for :class:`ResidualStore`).
        beta: decay per update, in [0, 1) (0.99 averages over roughly the last 100 steps).
        power: 1 (mean gradient, Adam's m) or 2 (mean square, Adam's v).
    """

    def __init__(self, param_index: dict[int, int], beta: float, power: int = 2) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if power not in (1, 2):
            raise ValueError(f"power must be 1 or 2, got {power}")
        self.beta, self.power = beta, power
        self.means = ResidualStore(param_index)  # (N,) per bucket
        self.weights = ResidualStore(param_index, one_per_parameter=True)  # (P,) per bucket
        self._sizes: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}  # (layout, device) -> (P,)

    def updated(self, bucket: dist.GradBucket, gradient: torch.Tensor) -> MomentUpdate:
        """The bucket's statistic with ``gradient`` ((N,), this rank's local gradient) folded in."""
        layout = self.means.layout(bucket)
        old_mean, old_weight = self.means.get(bucket, layout), self.weights.get(bucket)
        dtype = torch.float64 if gradient.dtype == torch.float64 else torch.float32
        # (N,) (1 - beta) * g ** p in a new tensor: the caller may change ``gradient`` in place afterwards
        fresh = (gradient.to(dtype).square() if self.power == 2 else gradient.to(dtype)).mul(1 - self.beta)
        mean = fresh if old_mean is None else old_mean * self.beta + fresh
        if old_weight is None:
            weight = fresh.new_full((len(layout),), 1 - self.beta)  # (P,)
        else:
            weight = old_weight * self.beta + (1 - self.beta)  # (P,)
        key = (layout, gradient.device)
        if key not in self._sizes:
            self._sizes[key] = torch.tensor([param.numel() for param in bucket.parameters()], device=gradient.device)
        return MomentUpdate(mean, weight, old_mean, old_weight, self._sizes[key])

    def commit(self, bucket: dist.GradBucket, update: MomentUpdate, nonfinite: torch.Tensor) -> None:
        """Stores ``update``, or keeps the old statistic where ``nonfinite`` (() bool) is true."""
        keep_mean = update.old_mean if update.old_mean is not None else torch.zeros_like(update.mean)
        keep_weight = update.old_weight if update.old_weight is not None else torch.zeros_like(update.weight)
        self.means.set(bucket, torch.where(nonfinite, keep_mean, update.mean))
        self.weights.set(bucket, torch.where(nonfinite, keep_weight, update.weight))

    def state_dict(self) -> dict[str, dict[int, torch.Tensor]]:
        """Means (numel,) and bias-correction weights (1,) per parameter position, on the CPU."""
        return {"means": self.means.state_dict(), "weights": self.weights.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replaces everything with what :meth:`state_dict` returned."""
        self.means.load_state_dict(state["means"])
        self.weights.load_state_dict(state["weights"])
