"""Weighted means of named values over an evaluation epoch, exact across data-parallel processes.

Lightning's ``self.log(..., sync_dist=True)`` averages each process's epoch mean with equal weight and needs every
process to log the same keys, which per-modality values (logged only for batches where a modality is present)
do not guarantee. This keeps ``sum(value * count)`` and ``sum(count)`` per name instead, and at the end of the
epoch sums both over every process (after agreeing on the union of names), so each mean is the one a single
process would have computed over the whole split, and every process ends up with the same numbers.
"""

import torch
import torch.distributed as dist

from fusion.alignment.gather import is_distributed


class EpochMeans:
    """Accumulates ``value`` weighted by ``count`` per name; :meth:`compute` reduces and starts over."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # name -> () float64 sum of value * count, on the values' device
        self._counts: dict[str, int | torch.Tensor] = {}  # int, or a () tensor on the device (`add_sum`)

    def add(self, name: str, value: torch.Tensor, count: int) -> None:
        """Adds ``value`` (a () tensor: the mean over ``count`` items); a count of 0 adds nothing."""
        if count <= 0:
            return
        weighted = value.detach().to(torch.float64) * count
        self._sums[name] = self._sums[name] + weighted if name in self._sums else weighted
        self._counts[name] = self._counts.get(name, 0) + count

    def add_sum(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        """Adds a () sum of values and their () count, both left on the device (no host synchronisation per
        step, e.g. gate weights summed over the samples where their modality is present)."""
        total, count = total.detach().to(torch.float64), count.detach().to(torch.float64)
        self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._counts[name] = self._counts[name] + count if name in self._counts else count

    def compute(self, device: torch.device) -> dict[str, float]:
        """Means over every process (the union of their names; each name's total count > 0), then resets.

        Collective when a process group of more than one process is initialised: every process must call it.
        ``device``: where the reduced tensor lives (the process's CUDA device under NCCL).
        """
        names = sorted(self._sums)
        distributed = is_distributed()
        if distributed:
            gathered: list[list[str] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, names)
            names = sorted({name for rank_names in gathered for name in rank_names})
        totals = torch.zeros(len(names), 2, dtype=torch.float64, device=device)  # (K, 2): sum, count
        for row, name in enumerate(names):
            if name in self._sums:
                totals[row, 0] = self._sums[name].to(device)
                count = self._counts[name]
                totals[row, 1] = count.to(device) if isinstance(count, torch.Tensor) else count
        if distributed and names:
            dist.all_reduce(totals)
        self._sums.clear()
        self._counts.clear()
        # a name added only with a count of 0 (through `add_sum`) has no mean
        return {name: float(total / count) for name, (total, count) in zip(names, totals.tolist(), strict=True)
                if count > 0}
