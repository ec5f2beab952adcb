"""Evaluation under DDP without counting a row twice: each process gets a disjoint, unpadded share of the split.

Lightning's default for evaluation loaders under DDP is a ``DistributedSampler``, which pads every process's
share to the same length by repeating rows, so a split that does not divide by the number of processes has some
rows counted twice. Here process r of W takes rows r, r + W, r + 2W, ...: the shares are disjoint, cover the
split, and differ by at most one row. That is enough because every evaluation metric is reduced as
count-weighted sums over processes once per epoch (torchmetrics states, :class:`fusion.tasks.epoch_means.EpochMeans`,
``self.log(..., sync_dist=True)`` of a mean, the row gathers of the align and sync tasks, which take uneven sizes),
and no collective runs per evaluation step except DDP's buffer broadcast in the first forward of validation
during fitting, which every process reaches as long as it holds a row (checked here). The sampler subclasses
``DistributedSampler``, so Lightning keeps it instead of putting its own in (no ``use_distributed_sampler=False``
is needed, and the training loader's sampling is untouched).
"""

from collections.abc import Iterator, Sized

import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler


class DistributedEvalSampler(DistributedSampler):
    """Rows ``rank, rank + W, rank + 2W, ...`` of a dataset of length N, in order, without padding.

    Args:
        dataset: the evaluation split (only its length is used).
        num_replicas: number of processes W (default: the process group's size).
        rank: this process (default: its rank in the process group).

    Raises:
        ValueError: the split has fewer rows than there are processes (one would evaluate nothing).
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        rows = len(dataset)
        if rows < self.num_replicas:
            raise ValueError(f"the evaluation split has {rows} rows for {self.num_replicas} processes: each process "
                             "needs at least one row (use fewer trainer.devices, or a larger split)")
        self.total_size = rows  # no padding
        self.num_samples = len(range(self.rank, rows, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def with_eval_sampler(loader: DataLoader) -> DataLoader:
    """``loader`` with a :class:`DistributedEvalSampler` when a process group of several processes is up.

    Without one (a single process) the loader is returned as it is. Only sequential, map-style loaders are
    rebuilt (same dataset, batch size, collate function and workers); anything else is returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return loader
    if loader.batch_size is None or not isinstance(loader.sampler, SequentialSampler):
        return loader
    options = {"batch_size": loader.batch_size, "num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
               "pin_memory": loader.pin_memory, "drop_last": loader.drop_last, "timeout": loader.timeout,
               "worker_init_fn": loader.worker_init_fn, "persistent_workers": loader.persistent_workers,
               "multiprocessing_context": loader.multiprocessing_context}
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, sampler=DistributedEvalSampler(loader.dataset), **options)
