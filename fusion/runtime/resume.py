"""Exact mid-epoch resume: a training DataLoader that remembers its position, and RNG states in checkpoints.

Lightning restores weights, optimizer, schedulers and loop counters, but a plain DataLoader restarts its
epoch from a new shuffle and the global random generators continue from wherever the new process is. Here:

- `EpochSampler` shuffles with `seed + epoch` (like DistributedSampler) and can start mid-epoch;
- `SeededItems` runs each `dataset[index]` under a generator seeded from (seed, epoch, index), so random
  augmentation does not depend on worker count, prefetching or what ran before;
- `ResumableDataLoader` counts the batches it has handed out and implements `state_dict`/`load_state_dict`,
  which Lightning stores in the checkpoint (`loops.fit_loop.state_dict.combined_loader`) and restores;
- `RngStateCallback` saves every rank's torch/CUDA/numpy/python generator states and restores them when
  training resumes, so dropout and other model-side randomness continue as if nothing happened.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one example of one epoch (mixes the three numbers; no Python hash randomisation)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    return (x * 0xD6E8FEB86659FD93 % (1 << 64)) >> 1


class SeededItems(Dataset):
    """Wraps a map-style dataset; `self[(epoch, index)]` is `dataset[index]` under its own seeded RNG.

    torch's CPU generator is seeded from `item_seed(seed, epoch, index)` for the call and restored afterwards,
    so the caller's torch stream (dropout, model-side augmentation) is untouched. Python's `random` and
    numpy's global generator are seeded the same way but not restored (saving numpy's state costs ~50x
    more than seeding it): after a batch they hold a deterministic state, which is what exact resume needs.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        s = item_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s % (1 << 32))
        torch_state = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(s)  # CPU only: CUDA generators stay as they are
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)


class EpochSampler(DistributedSampler):
    """This rank's share of a `seed + epoch` shuffle, yielding `(epoch, index)` keys for `SeededItems`.

    Subclasses DistributedSampler so Lightning keeps it under DDP (and calls `set_epoch`); with one process
    it is an ordinary seeded shuffle. `start_at(epoch, n)` makes the next pass over `epoch` skip its first n
    samples.
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, drop_last: bool = False):
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=int(seed), drop_last=drop_last)
        self._start: tuple[int, int] | None = None

    def start_at(self, epoch: int, samples: int) -> None:
        self._start = (int(epoch), int(samples))

    def __iter__(self):
        skip = 0
        if self._start is not None:
            if self._start[0] == self.epoch:
                skip = self._start[1]
            self._start = None
        epoch = self.epoch
        for index in list(super().__iter__())[skip:]:
            yield (epoch, index)


class ResumableDataLoader(DataLoader):
    """A DataLoader over `SeededItems` + `EpochSampler` whose `state_dict` is (epoch, batches handed out).

    Lightning saves `state_dict()` in every checkpoint and calls `load_state_dict()` before the first
    batch of a resumed run; the next pass then continues with the first batch not yet trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler) or self.batch_size is None:
            raise ValueError("ResumableDataLoader needs an EpochSampler and a batch_size")
        self._position = (0, 0)
        self._resume_from: tuple[int, int] | None = None

    def __iter__(self):
        epoch = self.sampler.epoch
        done = 0
        if self._resume_from is not None:
            if self._resume_from[0] == epoch:
                done = self._resume_from[1]
                self.sampler.start_at(epoch, done * self.batch_size)
            self._resume_from = None
        self._position = (epoch, done)
        for batch in super().__iter__():
            done += 1
            self._position = (epoch, done)
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches, "batch_size": int(self.batch_size),
                "world_size": int(self.sampler.num_replicas), "num_samples": int(self.sampler.num_samples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = self.state_dict()
        changed = [k for k in ("batch_size", "world_size", "num_samples") if state.get(k) != mine[k]]
        if changed:
            warnings.warn(f"checkpoint's training data position does not fit this loader ({changed} changed); "
                          "the interrupted epoch restarts from its first batch", stacklevel=2)
            self._resume_from = None
            return
        self._resume_from = (int(state["epoch"]), int(state["batches"]))


def resumable_loader(loader: DataLoader, seed: int) -> DataLoader:
    """The same loader (dataset, batch size, collate, workers) made resumable; others are returned as they are.

    Only map-style loaders with automatic batching and a random or sequential sampler can be rebuilt.
    """
    if isinstance(loader, ResumableDataLoader):
        return loader
    sampler = loader.sampler
    if loader.batch_size is None or not isinstance(sampler, (RandomSampler, SequentialSampler)):
        warnings.warn(f"training loader with {type(sampler).__name__} is not resumable mid-epoch; an interrupted "
                      "epoch restarts from its first batch", stacklevel=2)
        return loader
    if isinstance(sampler, RandomSampler) and (sampler.replacement or sampler._num_samples is not None):
        warnings.warn("a RandomSampler with replacement/num_samples is not resumable mid-epoch", stacklevel=2)
        return loader
    options = {"num_workers": loader.num_workers, "collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory,
               "drop_last": loader.drop_last, "timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn,
               "persistent_workers": loader.persistent_workers, "multiprocessing_context": loader.multiprocessing_context}
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    sampler = EpochSampler(loader.dataset, shuffle=isinstance(sampler, RandomSampler), seed=seed)
    return ResumableDataLoader(SeededItems(loader.dataset, seed), batch_size=loader.batch_size, sampler=sampler,
                               generator=torch.Generator().manual_seed(int(seed)), **options)


def make_train_loader_resumable(datamodule: L.LightningDataModule, seed: int) -> None:
    """Makes `datamodule.train_dataloader()` return `resumable_loader(<its loader>, seed)` (any datamodule)."""
    build = datamodule.train_dataloader

    def train_dataloader() -> DataLoader:
        return resumable_loader(build(), seed)

    datamodule.train_dataloader = train_dataloader


def capture_rng_states() -> dict[str, Any]:
    """This process's generator states as tensors/ints (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_states`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_loaders(trainer: L.Trainer) -> list[ResumableDataLoader]:
    """The resumable loaders among the trainer's training loaders (a loader, or a list/dict of them)."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return [dl for dl in loaders if isinstance(dl, ResumableDataLoader)]


class ExactResumeCallback(L.Callback):
    """Stores every rank's RNG states and the training loaders' positions in each checkpoint, and restores
    both when a resumed run starts training.

    The restore happens at `on_train_start` (after the sanity check, right before the first batch is drawn),
    so the first resumed step sees the batch and draws the random numbers the interrupted run would have.
    (Lightning's own restore of loader states is skipped when `configure_optimizers` asked for
    `estimated_stepping_batches`, which builds the loader before the checkpoint is read; this does not
    depend on that order.)
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._loaders_to_restore: list[dict[str, int]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        local = capture_rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, local)
        else:
            ranks = [local]
        loaders = [dl.state_dict() for dl in training_loaders(self._trainer)] if self._trainer is not None else []
        return {"rng_ranks": ranks, "loaders": loaders}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("rng_ranks", [])
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        self._loaders_to_restore = list(state_dict.get("loaders", []))
        if len(ranks) != world:
            warnings.warn(f"checkpoint holds RNG states of {len(ranks)} process(es), this run has {world}: "
                          "random streams are not restored", stacklevel=2)
            self._rng_to_restore = None
        else:
            self._rng_to_restore = ranks[rank]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loaders_to_restore:
            loaders = training_loaders(trainer)
            if len(loaders) == len(self._loaders_to_restore):
                for loader, state in zip(loaders, self._loaders_to_restore, strict=True):
                    loader.load_state_dict(state)
            else:
                warnings.warn("checkpoint's training loaders do not match this run's; the interrupted epoch "
                              "restarts from its first batch", stacklevel=2)
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
        self._rng_to_restore, self._loaders_to_restore = None, None
