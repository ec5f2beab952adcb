"""Exponential moving average of a model's weights, updated on the device after every optimizer step."""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """`average = d * average + (1 - d) * live` for every floating-point tensor of `module`'s state (parameters and
    buffers such as batch-norm statistics), with d = min(decay, (1 + t) / (10 + t)) after t updates, so the first
    weights fade fast. `update()` reads nothing on the host (it can run inside a captured CUDA graph); `swap()`
    exchanges the live and the averaged values in place (tensor addresses stay, so a captured graph stays valid).

    Args:
        module: the trained module, already on its device.
        decay: the largest d, in (0, 1).
        average: averaged values by state name to start from (a resumed run), else a copy of the live ones.
        updates: t to start from.
    """

    def __init__(self, module: nn.Module, decay: float, average: dict[str, torch.Tensor] | None = None,
                 updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight average decay must be in (0, 1), got {decay}")
        state = module.state_dict(keep_vars=True)
        self.names = [name for name, value in state.items() if value.is_floating_point()]
        self.live = [state[name].detach() for name in self.names]
        missing = sorted(set(self.names) - set(average)) if average is not None else []
        if missing:
            raise ValueError(f"weight average: the stored average lacks {missing[:3]} ({len(missing)} tensors)")
        self.average = [(average[name] if average is not None else live).detach().to(live.device, live.dtype).clone()
                        for name, live in zip(self.names, self.live)]
        self.decay = decay
        self.updates = torch.full((), float(updates), device=self.live[0].device if self.live else "cpu")
        self.swapped = False

    @torch.no_grad()
    def load(self, average: dict[str, torch.Tensor], updates: int) -> None:
        """Takes over stored averaged values (name -> tensor) and their update count (module not swapped)."""
        if self.swapped:
            raise RuntimeError("weight average: load() while the averaged weights are in the module")
        for name, value in zip(self.names, self.average):
            value.copy_(average[name])
        self.updates.fill_(float(updates))

    @torch.no_grad()
    def update(self) -> None:
        """One averaging step (after an optimizer step)."""
        self.updates += 1
        keep = torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)  # () on the device
        torch._foreach_mul_(self.average, keep)
        torch._foreach_add_(self.average, torch._foreach_mul(self.live, 1 - keep))

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges the module's values and the averaged ones."""
        for live, average in zip(self.live, self.average):
            held = live.clone()
            live.copy_(average)
            average.copy_(held)
        self.swapped = not self.swapped

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """State name -> averaged value (a copy), whichever side is in the module now."""
        side = self.live if self.swapped else self.average
        return {name: value.detach().clone() for name, value in zip(self.names, side)}

    def live_state(self) -> dict[str, torch.Tensor]:
        """State name -> the trained (not averaged) value (a copy)."""
        side = self.average if self.swapped else self.live
        return {name: value.detach().clone() for name, value in zip(self.names, side)}
