"""Loading streamed splits in a training run: epochs of batches, their checkpoint state, evaluation.

:class:`StreamLoader` reads one process's part of a :class:`~.streaming.StreamingImages` split
(never sharded again by Accelerate). A training loader keeps one iterator over the endless stream
for the whole run and hands out a fixed number of batches per epoch (:meth:`StreamLoader.epoch`,
:func:`stream_batches_per_epoch`). It remembers the position of every reader (the process, or
each loader worker) after each batch, and writes the one a checkpoint needs as JSON
(``stream_state_<process>.json``, :meth:`StreamLoader.save_state`) so that a resumed run
continues the stream where it stopped (:meth:`StreamLoader.load_state`).

A resumed stream continues exactly when the training split has no shuffle buffer. With one, the
examples the buffer held are not seen again in that pass: ``datasets`` refills the buffer from the
data that follows (``IterableDataset.load_state_dict``).

:func:`evaluate_stream` evaluates a streamed split: every process reads its own part, and the
sums of loss and hits are added over the processes at the end (the parts may differ in size).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pb_adapters.training.data.datasets import DataError
from pb_adapters.training.data.streaming import StreamingImages
from pb_adapters.training.metrics import ClassificationMetrics
from pb_adapters.training.modeling import forward_logits, uses_pixel_values

__all__ = [
    "STREAM_STATE_FORMAT",
    "StreamLoader",
    "evaluate_stream",
    "stream_batches_per_epoch",
    "stream_state_file",
]

#: Version of the JSON written by :meth:`StreamLoader.save_state`.
STREAM_STATE_FORMAT = 1


def stream_state_file(folder: Path, process_index: int) -> Path:
    """Where process ``process_index`` keeps its stream position in a checkpoint."""
    return folder / f"stream_state_{process_index}.json"


class StreamLoader:
    """Batches of a streamed split for one process, moved to ``device``.

    Args:
        dataset: the split.
        batch_size: per-process batch size.
        train: an endless, shuffled training stream (else one pass, in order).
        rank / world_size: this process and the number of processes.
        num_workers: loader worker processes (each reads its own part of the stream).
        device: where batches go.
        keep: positions remembered for checkpoints (at least the gradient accumulation steps + 1,
            so an interrupted run can checkpoint at its last optimiser step).
    """

    def __init__(
        self,
        dataset: StreamingImages,
        batch_size: int,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        device: Any = "cpu",
        keep: int = 2,
    ) -> None:
        dataset.configure(batch_size=batch_size, rank=rank, world_size=world_size, train=train)
        self.dataset, self.batch_size, self.device = dataset, int(batch_size), device
        self.world_size, self.num_workers, self.keep = world_size, int(num_workers), int(keep)
        self.train = train
        self._iterator: Iterator[Any] | None = None
        self._consumed = 0  # batches taken since this iterator started
        self._epoch_start = 0
        self._readers: dict[str, dict[str, Any]] = {}
        self._positions: dict[int, dict[str, Any]] = {0: self._position()}

    def _loader(self) -> DataLoader:
        # batch_size=None: the dataset yields whole batches (with each reader's position)
        extra = {"num_workers": self.num_workers}
        if self.num_workers and not self.train:
            extra["persistent_workers"] = False
        return DataLoader(self.dataset, batch_size=None, **extra)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over an evaluation split."""
        for images, labels, _ in self._loader():
            yield images.to(self.device), labels.to(self.device)

    # ------------------------------------------------------------------ training
    def epoch(self, batches: int, *, done: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The next ``batches - done`` batches of the stream (an epoch of ``batches`` batches,
        ``done`` of which an interrupted run had already trained)."""
        if self._iterator is None:
            self._iterator = iter(self._loader())
        self._epoch_start = self._consumed - done
        for _ in range(batches - done):
            images, labels, position = next(self._iterator)
            self._consumed += 1
            self._readers[str(position["reader"])] = position
            self._positions[self._consumed] = self._position()
            self._positions.pop(self._consumed - self.keep, None)
            yield images.to(self.device), labels.to(self.device)

    def _position(self) -> dict[str, Any]:
        """Where the stream stands now: the next reader in turn and each reader's position."""
        readers = max(1, self.num_workers)
        return {
            "next_reader": (self.dataset.rotation + self._consumed) % readers,
            "readers": {
                k: dict(v) for k, v in {**self.dataset.resume_from, **self._readers}.items()
            },
        }

    def save_state(self, folder: Path, process_index: int, batches_in_epoch: int) -> None:
        """Write the position after ``batches_in_epoch`` batches of the current epoch as JSON."""
        consumed = self._epoch_start + batches_in_epoch
        if consumed not in self._positions:
            raise DataError(f"the stream position after batch {consumed} is no longer known")
        payload = {
            "format": STREAM_STATE_FORMAT,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            **self._positions[consumed],
        }
        text = json.dumps(payload)
        stream_state_file(folder, process_index).write_text(text + "\n", encoding="utf-8")

    def load_state(self, folder: Path, process_index: int) -> None:
        """Continue from the position :meth:`save_state` wrote into ``folder``."""
        path = stream_state_file(folder, process_index)
        if not path.is_file():
            raise DataError(
                f"{folder} holds no stream position for process {process_index} ({path.name}); "
                "it was not written by a streamed run with this many processes"
            )
        self.restore_state(json.loads(path.read_text(encoding="utf-8")), path)

    def restore_state(self, saved: Any, path: Path) -> None:
        """Continue from ``saved``, a position :meth:`save_state` wrote (read from ``path``)."""
        if not isinstance(saved, dict):
            raise DataError(f"{path}: a stream position is a JSON object")
        if saved.get("format") != STREAM_STATE_FORMAT:
            raise DataError(f"{path}: unknown stream state format {saved.get('format')!r}")
        for key in ("world_size", "num_workers", "batch_size"):
            if saved[key] != getattr(self, key):
                raise DataError(
                    f"{path} was written with {key}={saved[key]}, this run has "
                    f"{getattr(self, key)}: the stream is split by reader, resume with the same"
                )
        if self._iterator is not None:
            raise RuntimeError("load_state must come before the first epoch")
        self.dataset.rotation = int(saved["next_reader"])
        self.dataset.resume_from = dict(saved["readers"])
        self._readers = {}
        self._positions = {0: self._position()}


def stream_batches_per_epoch(
    loader: StreamLoader,
    *,
    steps_per_epoch: int | None,
    accumulation: int,
    max_batches: int | None = None,
) -> int:
    """Batches per epoch of a streamed training split: ``steps_per_epoch`` optimiser steps, else
    as many as the split's known size gives every process; at most ``max_batches``."""
    if steps_per_epoch is None:
        size = loader.dataset.num_examples
        if size is None:
            raise DataError(
                "the streamed training split does not say how many examples it has: give "
                "steps_per_epoch (--steps-per-epoch)"
            )
        steps_per_epoch = size // (loader.batch_size * loader.world_size * accumulation)
        if steps_per_epoch < 1:
            raise DataError(
                f"{size} streamed training examples make no full optimiser step of "
                f"{loader.batch_size} x {loader.world_size} process(es) x {accumulation}"
            )
    batches = int(steps_per_epoch) * accumulation
    return min(batches, max_batches) if max_batches is not None else batches


@torch.no_grad()
def evaluate_stream(
    loader: StreamLoader,
    model: torch.nn.Module,
    accelerator: Any,
    set_train_mode: Callable[[torch.nn.Module], None],
) -> dict[str, float]:
    """Loss, top-1 and top-5 of ``model`` over a streamed split, summed over all processes."""
    was_training = model.training
    model.eval()
    metrics = ClassificationMetrics(ks=(1, 5))
    transformers_api = uses_pixel_values(model)
    for images, labels in loader:
        with accelerator.autocast():
            logits = forward_logits(model, images, transformers_api)
        metrics.update(logits, labels)  # this process's part; added up below
    totals = torch.tensor(
        [metrics.loss_sum, *metrics.hits, metrics.count], dtype=torch.float64, device=loader.device
    )
    totals = accelerator.reduce(totals, reduction="sum").cpu()
    metrics.loss_sum = float(totals[0])
    metrics.hits = [round(float(v)) for v in totals[1:-1]]
    metrics.count = round(float(totals[-1]))
    if was_training:
        set_train_mode(model)
    return metrics.compute()
