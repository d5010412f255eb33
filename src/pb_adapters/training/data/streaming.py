"""Streamed ``datasets`` sources: train on data read as it is needed, never stored whole.

:func:`load_streaming_datasets` opens a Hub name, a local image folder or local data files
(parquet, arrow, ...) with ``datasets.load_dataset(..., streaming=True)`` and returns
:class:`StreamingSplits`, whose splits are :class:`StreamingImages`: iterable datasets of
``(images, labels, position)`` batches.

How a split is read (:meth:`StreamingImages.__iter__`): every reader, one per process and loader
worker, is a node of ``datasets.distributed.split_dataset_by_node`` and reads its own shards (or
every n-th example when the shards do not divide evenly). A training split is endless: pass after
pass over the node's part, each pass reshuffled with a buffer (``IterableDataset.shuffle(seed,
buffer_size)``) reseeded by ``set_epoch(pass)``; a pass ends with the last full batch. Every
batch carries the node's position (pass, batch, ``IterableDataset.state_dict()``), which is what
a checkpoint stores to continue the stream where it stopped. Random augmentation is seeded per
example by ``(seed, node, pass, batch, index)``, so a resumed run augments the same way.

Validation and test come from the dataset's own splits or from a held-out stream: the first
``val_examples`` (then ``test_examples``) examples of the training stream, which training skips.
Every reader holds out its own share of them (the first ``val_examples / readers`` examples of its
part, with ``skip`` / ``take``), so validation, test and training never overlap; which examples
they are depends on the number of readers (processes x loader workers), fixed for one run.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from pb_adapters.training.data.datasets import DataError
from pb_adapters.training.data.hf import _find_column, is_saved_hf_dataset, named_splits
from pb_adapters.training.data.images import IMAGE_ERRORS, coerce_image, to_rgb
from pb_adapters.training.data.splits import DatasetSplits

__all__ = [
    "StreamingImages",
    "StreamingSplits",
    "is_streamed",
    "load_streaming_datasets",
]

#: Data-file endings that ``datasets`` reads as a packaged format (``parquet``, ``arrow``...).
_FILE_FORMATS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".tar": "webdataset",
}


def is_streamed(data: Any) -> bool:
    """Whether ``data`` is a streamed split (or a loader over one)."""
    return isinstance(getattr(data, "dataset", data), StreamingImages)


class StreamingImages(IterableDataset):
    """One streamed split of labelled images, read in batches by each node (see the module).

    Args:
        stream: a ``datasets.IterableDataset`` with an image and a ``ClassLabel`` column.
        image_column / label_column: the column names.
        transform: applied to each RGB PIL image (set later by
            :meth:`StreamingSplits.set_transforms`).
        shuffle_buffer: examples in the shuffle buffer of a training split (0 or 1: no buffer;
            shard order still changes from pass to pass when the stream allows it).
        seed: seeds the shuffle and the per-example augmentation.
        num_examples: the split's size, when the source knows it.
        window: the examples of ``stream`` this split is made of, ``(first, end)`` counted over
            the whole stream (``end`` None: to the end), each reader taking its share.
        strict: raise on an unreadable image instead of skipping it.
    """

    def __init__(
        self,
        stream: Any,
        image_column: str,
        label_column: str,
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_examples: int | None = None,
        window: tuple[int, int | None] = (0, None),
        strict: bool = False,
    ) -> None:
        import datasets

        # decoded by the reader, so that a skipped or resumed-over example costs no decoding
        self.stream = stream.cast_column(image_column, datasets.Image(decode=False))
        self.image_column, self.label_column = image_column, label_column
        self.transform = transform
        self.shuffle_buffer, self.seed = int(shuffle_buffer), int(seed)
        self.num_examples, self.window, self.strict = num_examples, window, strict
        # set by the loader (configure / resume) before the first iteration
        self.batch_size, self.rank, self.world_size, self.train = 1, 0, 1, False
        self.rotation = 0  # logical reader of torch's loader worker 0 (resume)
        self.resume_from: dict[str, dict[str, Any]] = {}  # logical reader -> position

    def configure(self, *, batch_size: int, rank: int, world_size: int, train: bool) -> None:
        """Read batches of ``batch_size`` as process ``rank`` of ``world_size``."""
        self.batch_size, self.rank, self.world_size, self.train = (
            int(batch_size), int(rank), int(world_size), bool(train),
        )  # fmt: skip

    def _reader(self) -> tuple[int, int, int]:
        """``(logical reader, node, nodes)`` of the calling process / loader worker."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        logical = (worker + self.rotation) % workers
        return logical, self.rank * workers + logical, self.world_size * workers

    def _node_stream(self, node: int, nodes: int) -> Any:
        from datasets.distributed import split_dataset_by_node

        part = split_dataset_by_node(self.stream, rank=node, world_size=nodes)
        first, end = self.window
        if first:
            part = part.skip(_share(first, node, nodes))
        if end is not None:
            part = part.take(_share(end, node, nodes) - _share(first, node, nodes))
        if self.train and self.shuffle_buffer > 1:
            part = part.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        return part

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        logical, node, nodes = self._reader()
        part = self._node_stream(node, nodes)
        if not self.train:  # one pass, the last batch kept whole
            part.set_epoch(0)
            yield from self._batches(part, logical, node, 0, 0, keep_last=True)
            return
        start = self.resume_from.get(str(logical))
        pass_index = int(start["pass"]) if start else 0
        while True:
            part.set_epoch(pass_index)
            first = 0
            if start is not None and int(start["pass"]) == pass_index:
                part.load_state_dict(start["state"])
                first = int(start["batch"])
            count = 0
            for batch in self._batches(part, logical, node, pass_index, first, keep_last=False):
                count += 1
                yield batch
            if count == 0 and first == 0:
                raise DataError(
                    f"reader {node} of {nodes} got no full batch of {self.batch_size} from a "
                    "pass over its part of the stream; use a smaller batch, fewer processes or "
                    "loader workers, or more data"
                )
            pass_index += 1

    def _batches(
        self, part: Any, logical: int, node: int, pass_index: int, first: int, *, keep_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        images: list[Any] = []
        labels: list[int] = []
        batch = first
        for row in part.iter(batch_size=1):
            seed = ((self.seed * 1_000_003 + node) * 1_000_003 + pass_index) * 1_000_003 + batch
            item = self._item(
                row[self.image_column][0], row[self.label_column][0], seed, len(images)
            )
            if item is None:
                continue
            images.append(item[0])
            labels.append(item[1])
            if len(images) == self.batch_size:
                batch += 1
                position = {
                    "reader": logical, "pass": pass_index, "batch": batch, "state": part.state_dict(),
                }  # fmt: skip
                yield _collate(images), torch.tensor(labels), position
                images, labels = [], []
        if images and keep_last:
            yield _collate(images), torch.tensor(labels), {"reader": logical}

    def _item(self, cell: Any, label: Any, batch_seed: int, index: int) -> tuple[Any, int] | None:
        """One example as ``(transformed image, label)``; None for one that is skipped."""
        if not isinstance(label, int) or label < 0:
            if self.strict:
                raise DataError(f"a streamed example has label {label!r}, which is no class")
            return None
        try:
            image = to_rgb(coerce_image(cell))
        except IMAGE_ERRORS as exc:
            if self.strict:
                raise DataError(f"cannot read a streamed image: {exc}") from exc
            warnings.warn(f"skipping an unreadable streamed image ({exc})", stacklevel=2)
            return None
        if self.transform is None:
            return image, label
        seed = (batch_seed * 1_000_003 + index) % 2**63  # torch seeds are 64-bit
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.transform(image), label
            finally:
                random.setstate(py_state)


def _share(count: int, node: int, nodes: int) -> int:
    """How many of the stream's first ``count`` examples reader ``node`` of ``nodes`` holds."""
    return count // nodes + (1 if node < count % nodes else 0)


def _collate(images: list[Any]) -> Any:
    return torch.stack(images) if isinstance(images[0], torch.Tensor) else images


@dataclass
class StreamingSplits:
    """Train, validation and test splits of a streamed task (validation and test may be None).

    Attributes mirror :class:`~pb_adapters.training.data.DatasetSplits`; ``notes`` say where
    validation and test came from.
    """

    train: StreamingImages
    validation: StreamingImages | None
    test: StreamingImages | None
    id2label: dict[int, str]
    name: str = "dataset"
    notes: list[str] = field(default_factory=list)

    # the same as a map-style task's: both read only ``id2label``
    num_labels = DatasetSplits.num_labels
    label2id = DatasetSplits.label2id

    def set_transforms(self, train_transform: Any, eval_transform: Any) -> StreamingSplits:
        """Use ``train_transform`` for the training split and ``eval_transform`` for the others."""
        self.train.transform = train_transform
        for split in (self.validation, self.test):
            if split is not None:
                split.transform = eval_transform
        return self

    def summary(self) -> str:
        """One line: name, classes and where the splits come from."""
        size = self.train.num_examples
        return (
            f"{self.name} (streamed): {self.num_labels} classes, train "
            + (f"{size} examples" if size is not None else "of unknown size")
            + f", validation {'yes' if self.validation else 'none'}"
            + f", test {'yes' if self.test else 'none'}"
        )


def _open_stream(source: str, config_name: str | None, **load_kwargs: Any) -> Any:
    """``source`` opened with ``streaming=True``: a dict of ``datasets.IterableDataset``."""
    import datasets

    path = Path(source)
    if path.is_dir() and is_saved_hf_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        shards = max(1, os.cpu_count() or 1)
        return {k: v.to_iterable_dataset(num_shards=min(shards, len(v))) for k, v in loaded.items()}
    if path.is_file():
        fmt = _FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{source}: cannot stream a {path.suffix} file; use {_FILE_FORMATS}")
        return datasets.load_dataset(fmt, data_files=str(path), streaming=True, **load_kwargs)
    return datasets.load_dataset(source, config_name, streaming=True, **load_kwargs)


def _split_size(stream: Any) -> int | None:
    info = getattr(stream, "info", None)
    splits = getattr(info, "splits", None) or {}
    split = getattr(stream, "split", None)
    found = splits.get(str(split)) if split is not None else None
    return int(found.num_examples) if found is not None and found.num_examples else None


def load_streaming_datasets(
    source: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    config_name: str | None = None,
    val_examples: int | None = None,
    test_examples: int | None = None,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    strict: bool = False,
    **load_kwargs: Any,
) -> StreamingSplits:
    """Open ``source`` as streamed train / validation / test splits.

    Args:
        source: a ``datasets`` Hub name, a local image folder, a folder of data files, one data
            file (``.parquet``, ``.arrow``...) or a ``save_to_disk`` folder.
        image_column / label_column: guessed as in :func:`~pb_adapters.training.data.load_hf_datasets`;
            the label column must be a ``ClassLabel`` (a stream cannot be scanned for its classes).
        config_name: the dataset's configuration.
        val_examples: hold out the first this many training examples as the validation stream
            (default: the dataset's validation split, else no validation).
        test_examples: hold out the next this many as the test stream (default: the dataset's
            test split, else no test).
        max_train_examples / max_eval_examples: read at most this many examples per split.
        shuffle_buffer: the training shuffle buffer (0: no buffer).
        seed: shuffle and augmentation seed.
        strict: raise on unreadable images and unusable labels instead of skipping them.
    """
    import datasets

    source = str(source)
    splits = named_splits(_open_stream(source, config_name, **load_kwargs), source)
    train = splits["train"]
    features = train.features
    if features is None:
        raise DataError(f"{source}: the stream does not declare its columns; cannot stream it")
    image_col = _find_column(features, image_column, "image")
    label_col = _find_column(features, label_column, "label")
    if not isinstance(features[label_col], datasets.ClassLabel):
        raise DataError(
            f"streaming needs a ClassLabel label column; {label_col!r} is {features[label_col]} "
            "(the classes of a stream cannot be collected without reading it all)"
        )
    id2label = dict(enumerate(features[label_col].names))
    notes: list[str] = []
    windows: dict[str, tuple[int, int | None]] = {}
    held = 0
    for name, count in (("validation", val_examples), ("test", test_examples)):
        if count:
            if name in splits:
                raise DataError(f"{source} has a {name} split; do not also hold one out")
            windows[name] = (held, held + count)
            splits[name] = train
            notes.append(f"{name}: {count} training examples held out")
            held += count
        elif name not in splits:
            notes.append(f"no {name} split")
    size = _split_size(train)
    size = size - held if size is not None else None
    windows["train"] = (held, None)
    if max_train_examples:
        windows["train"] = (held, held + max_train_examples)
        size = min(size, max_train_examples) if size is not None else max_train_examples

    def wrap(name: str) -> StreamingImages | None:
        if name not in splits:
            return None
        first, end = windows.get(name, (0, None))
        if name != "train" and max_eval_examples:
            end = first + max_eval_examples if end is None else min(end, first + max_eval_examples)
        return StreamingImages(
            splits[name], image_col, label_col, window=(first, end), seed=seed, strict=strict,
            shuffle_buffer=shuffle_buffer if name == "train" else 0,
            num_examples=size if name == "train" else None,
        )  # fmt: skip

    path = Path(source)
    return StreamingSplits(
        wrap("train"),  # type: ignore[arg-type]
        wrap("validation"),
        wrap("test"),
        id2label,
        name=path.name if path.exists() else source,
        notes=notes,
    )
