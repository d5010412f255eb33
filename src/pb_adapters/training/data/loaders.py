"""Data loaders: the one factory the trainer, the command line and user scripts share.

A training loader shuffles each epoch with a generator seeded by ``(seed, epoch)`` and gives every
item its own RNG seed, ``f(seed, epoch, index)``, for its random augmentation. An epoch's batches
therefore depend only on the seed and the epoch: not on the number of worker processes, not on
what else drew random numbers, and not on whether the run was resumed from a checkpoint in the
middle of the epoch.
"""

from __future__ import annotations

import os
import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pb_adapters.training.data.splits import DatasetSplits

__all__ = [
    "EpochSampler",
    "SeededItems",
    "build_dataloader",
    "build_dataloaders",
    "default_eval_batch_size",
    "default_num_workers",
]


def default_num_workers() -> int:
    """Loader workers to use by default: 0 on machines with 2 CPUs or fewer, else CPUs - 1 (max 8).

    On a 2-core machine a worker process competes with torch's two compute threads, and torch's
    OpenMP threads then spend their time waiting for each other (a CPU step can get several times
    slower); decoding in the main process between steps is faster there.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus - 1)


def default_eval_batch_size(batch_size: int) -> int:
    """The evaluation batch size when none is given: the training one, at least 64."""
    return max(batch_size, 64)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles with a generator seeded by ``(seed, epoch)`` and yields ``epoch * n + index``.

    The epoch travels inside the index (decoded by :class:`SeededItems`) so that persistent
    worker processes, which never see attribute changes made here, still know it. Each pass
    moves on to the next epoch; :meth:`use_epoch` picks one (the trainer sets it every epoch).
    The method is not called ``set_epoch``: Accelerate calls that one with its own counter.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` (0-based) on the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1_000_003 + epoch)
        offset = epoch * self.size
        return iter((offset + torch.randperm(self.size, generator=gen)).tolist())


class SeededItems(Dataset):
    """Gives every training item its own RNG seed, ``f(seed, epoch, index)``.

    Random augmentation then does not depend on the global RNG's history, which Accelerate's
    prefetching loader interleaves with the model's own random draws: this is what makes a
    resumed run (and one with any number of workers) see exactly the same augmented images.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, token: int) -> Any:
        size = len(self.dataset)  # type: ignore[arg-type]
        epoch, index = divmod(int(token), size)
        item_seed = (self.seed * 1_000_003 + epoch) * 100_000_007 + index
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A loader over ``dataset``: shuffled and seeded per epoch (``train``), else in order.

    A training loader's sampler is an :class:`EpochSampler` (``loader.sampler.use_epoch(e)``
    replays epoch ``e``). ``num_workers`` defaults to :func:`default_num_workers`; workers are
    kept alive between epochs.
    """
    workers = default_num_workers() if num_workers is None else num_workers
    extra: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory}
    if workers > 0:
        extra["persistent_workers"] = True
    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **extra)
    sampler = EpochSampler(len(dataset), seed)  # type: ignore[arg-type]
    return DataLoader(
        SeededItems(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        **extra,
    )


def build_dataloaders(
    splits: DatasetSplits,
    batch_size: int = 32,
    *,
    eval_batch_size: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """``(train, validation, test)`` loaders from :func:`build_dataloader`, as the trainer makes
    them; the training one reshuffles (seeded) on every pass."""
    eval_bs = eval_batch_size or default_eval_batch_size(batch_size)
    common = {"num_workers": num_workers, "pin_memory": pin_memory}
    train = build_dataloader(
        splits.train, batch_size, train=True, seed=seed, drop_last=drop_last, **common
    )
    val = build_dataloader(splits.validation, eval_bs, **common)
    test = build_dataloader(splits.test, eval_bs, **common)
    return train, val, test
