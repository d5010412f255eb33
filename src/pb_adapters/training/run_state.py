"""Where a training run stands, as one object a checkpoint saves and a resumed run restores.

:class:`RunState` holds the epoch and batch reached, the optimiser step, the running loss, the
loss the divergence check compares with, the best epoch so far (its key, metrics and trainable
state) and the history of finished epochs. It is written into every checkpoint as
``trainer_state.json`` (plus the best epoch's tensors as ``best_state.safetensors``), together
with the manifest of the checkpoint's files, and read back with :meth:`RunState.from_checked_dict`,
which refuses anything malformed. The random states are per process, so each process writes
its own ``rng_state_<process>.safetensors`` (:func:`save_rng_state`); :func:`read_rng_state`
checks one on throwaway generators before :func:`set_rng_state` applies it. Nothing here is
pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pb_adapters.training.checkpoint_io import (
    CheckpointReader,
    Expected,
    file_manifest,
    shard_file,
)
from pb_adapters.training.errors import CheckpointError
from pb_adapters.training.sharding import local_tensor

__all__ = [
    "BEST_STATE_FILE",
    "STATE_FILE",
    "RunState",
    "best_state_file",
    "best_state_spec",
    "read_rng_state",
    "restore_trainable_state",
    "rng_state",
    "rng_state_file",
    "save_best_state",
    "save_rng_state",
    "set_rng_state",
    "trainable_state",
]

#: JSON state of a checkpoint; written last, so its presence marks a complete checkpoint.
STATE_FILE = "trainer_state.json"
#: The best epoch's trainable parameters and floating-point buffers (under FSDP, each process's
#: slice is ``best_state.shard-<process>.safetensors``: see :func:`best_state_file`).
BEST_STATE_FILE = "best_state.safetensors"
_BUFFER = "buffer:"


@dataclass
class RunState:
    """The progress of one training run.

    Attributes:
        epoch: the epoch in progress (1-based).
        batches_in_epoch: batches of that epoch already trained.
        global_step: optimiser steps taken.
        accelerate_step: Accelerate's micro-batch counter, which decides when gradient
            accumulation syncs.
        ema: running mean of the training loss (progress bar, trackers).
        loss_reference: the training loss the divergence check compares with: the first
            batch's, then the first epoch's mean.
        best_key: ``(validation top-1, -validation loss)`` of the best epoch so far.
        best_epoch: that epoch (1-based; 0 before the first).
        best_val: its validation metrics.
        history: one record per finished epoch (what ``metrics.jsonl`` holds).
        partial: the running training metrics and learning rates of an unfinished epoch
            (``None`` once the epoch's record, validation included, is in ``history``).
        best_state: the best epoch's trainable state (tensors; saved beside the JSON).
    """

    epoch: int = 1
    batches_in_epoch: int = 0
    global_step: int = 0
    accelerate_step: int = 0
    ema: float | None = None
    loss_reference: float | None = None
    best_key: tuple[float, float] | None = None
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def consider(self, epoch: int, val: dict[str, float]) -> bool:
        """Record ``epoch``'s validation metrics; whether it is the best so far (top-1, then
        loss). The caller snapshots ``best_state`` when it is."""
        key = (val["top1"], -val["loss"])
        if self.best_key is not None and not key > self.best_key:
            return False
        self.best_key, self.best_epoch, self.best_val = key, epoch, val
        return True

    def to_dict(self) -> dict[str, Any]:
        """The JSON part (everything but ``best_state``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["best_state"]
        out["best_key"] = list(self.best_key) if self.best_key is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        """Read :meth:`to_dict`'s output (other keys, such as the arguments, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"best_state"}
        state = cls(**{k: v for k, v in data.items() if k in names})
        state.best_key = tuple(state.best_key) if state.best_key is not None else None
        return state

    @classmethod
    def from_checked_dict(cls, data: Any) -> RunState:
        """:meth:`from_dict` after checking every field's type, range and consistency.

        Raises:
            CheckpointError: the first field that is missing, malformed or contradicts another.
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"{STATE_FILE} does not hold a JSON object")
        for name, low in (("epoch", 1), ("batches_in_epoch", 0), ("global_step", 0)):
            _check(_is_int(data.get(name), low), f"{name} must be an integer >= {low}")
        _check(_is_int(data.get("accelerate_step", 0), 0), "accelerate_step must be >= 0")
        _check(_is_int(data.get("best_epoch", 0), 0), "best_epoch must be >= 0")
        for name in ("ema", "loss_reference"):
            _check(data.get(name) is None or _is_number(data[name]), f"{name} must be a number")
        key = data.get("best_key")
        _check(key is None or _numbers(key, 2), "best_key must be two numbers")
        _check(_str_numbers(data.get("best_val", {})), "best_val must map names to numbers")
        history = data.get("history")
        _check(
            isinstance(history, list) and all(isinstance(h, dict) for h in history),
            "history must be a list of records",
        )
        partial = data.get("partial")
        if partial is not None:
            _check_partial(partial)
        done = data["epoch"] if partial is None else data["epoch"] - 1
        _check(
            len(history) == done,
            f"the history has {len(history)} epochs, but the state says {done} are finished",
        )
        return cls.from_dict(data)

    def save(self, folder: Path, *, args: dict[str, Any], files: Iterable[str] = ()) -> None:
        """Write ``trainer_state.json``: the JSON fields, ``args``, and the manifest (size and
        SHA-256) of the checkpoint's other ``files`` (the best state is written apart, by
        :func:`save_best_state`)."""
        data = {**self.to_dict(), "args": args, "files": file_manifest(folder, files)}
        (folder / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckpointError(f"{STATE_FILE}: {message}")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    """A finite float, or an int a float can hold (JSON integers have no bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _numbers(value: Any, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(map(_is_number, value))


def _str_numbers(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_number(v) for v in value.values())


def _check_partial(partial: Any) -> None:
    """The running metrics of an unfinished epoch (see ``ClassificationMetrics.state_dict``)."""
    _check(isinstance(partial, dict), "partial must be an object")
    _check(_is_number(partial.get("loss_sum")), "partial.loss_sum must be a number")
    _check(_is_int(partial.get("count"), 0), "partial.count must be an integer >= 0")
    hits = partial.get("hits")
    _check(
        isinstance(hits, list) and len(hits) == 1 and _is_int(hits[0], 0),
        "partial.hits must be one integer >= 0",
    )
    _check(_str_numbers(partial.get("lrs")), "partial.lrs must map group names to numbers")


# ---------------------------------------------------------------------------- best state
def _best_items(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param
    persistent = model.state_dict().keys()  # not caches such as an adapter's merged weight
    for name, buffer in model.named_buffers():
        if name in persistent and (
            buffer.is_floating_point() or name.endswith("num_batches_tracked")
        ):
            yield _BUFFER + name, buffer


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of what training changes: trainable parameters, and the persistent floating
    buffers and batch counts (norm statistics). Under FSDP, reshard the model first: the copy
    holds this process's slices."""
    return {name: t.detach().clone() for name, t in _best_items(model)}


def best_state_spec(model: nn.Module) -> Expected:
    """What this process's part of :func:`trainable_state` holds: name -> (dtype, shape)."""
    return {name: (t.dtype, tuple(local_tensor(t).shape)) for name, t in _best_items(model)}


def restore_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` (or the slices read from a checkpoint) back into
    ``model``; under FSDP, reshard the model first."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in state.items():
            target = buffers[key[len(_BUFFER) :]] if key.startswith(_BUFFER) else params[key]
            local_tensor(target).copy_(local_tensor(value))  # FSDP: this process's slice


def best_state_file(shard: int | None = None) -> str:
    """``best_state.safetensors``, or process ``shard``'s slice of it under FSDP."""
    return shard_file(BEST_STATE_FILE, shard)


def save_best_state(
    best_state: dict[str, torch.Tensor] | None, folder: Path, shard: int | None = None
) -> None:
    """Write the best epoch's state (this process's slices with ``shard``) into ``folder``;
    nothing before the first validated epoch."""
    from safetensors.torch import save_file

    if best_state is not None:
        tensors = {k: local_tensor(v).detach().contiguous().cpu() for k, v in best_state.items()}
        save_file(tensors, folder / best_state_file(shard))


# ---------------------------------------------------------------------------- random states
def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch, CUDA) at this moment."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states taken by :func:`rng_state` (or checked by :func:`read_rng_state`)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_file(process_index: int) -> str:
    """The file name of process ``process_index``'s random states in a checkpoint."""
    return f"rng_state_{process_index}.safetensors"


def save_rng_state(path: Path) -> None:
    """Write the global RNG states as safetensors (tensors + string metadata, no pickle)."""
    from safetensors.torch import save_file

    state = rng_state()
    version, keys, gauss = state["python"]
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    tensors = {
        "torch": state["torch"],
        "python": torch.tensor(keys, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
    }
    for i, cuda_state in enumerate(state.get("cuda", [])):
        tensors[f"cuda_{i}"] = cuda_state
    meta = {
        "python_version": str(version),
        "python_gauss": json.dumps(gauss),
        "numpy": json.dumps([np_name, int(np_pos), int(np_has_gauss), float(np_gauss)]),
    }
    save_file(tensors, path, metadata=meta)


_MAX_CUDA_DEVICES = 64
_MT_WORDS = 624  # words of a Mersenne Twister state (Python's and NumPy's)


def _rng_expected() -> tuple[Expected, Expected]:
    """The tensors an RNG file must hold, and the CUDA ones it may hold."""
    required: Expected = {
        "torch": (torch.uint8, tuple(torch.get_rng_state().shape)),
        "python": (torch.int64, (_MT_WORDS + 1,)),
        "numpy": (torch.int64, (_MT_WORDS,)),
    }
    cuda_shape = tuple(torch.cuda.get_rng_state(0).shape) if torch.cuda.is_available() else (16,)
    optional: Expected = {f"cuda_{i}": (torch.uint8, cuda_shape) for i in range(_MAX_CUDA_DEVICES)}
    return required, optional


def read_rng_state(reader: CheckpointReader, process_index: int) -> dict[str, Any]:
    """Process ``process_index``'s random states from the checkpoint, checked by setting them on
    throwaway generators; the global ones are untouched (see :func:`set_rng_state`)."""
    name = rng_state_file(process_index)
    if not reader.has(name):
        raise CheckpointError(
            f"{reader.folder} has no random state for process {process_index} (was it written "
            "by a run with fewer processes?); resume with the same number of processes"
        )
    required, optional = _rng_expected()
    tensors, meta = reader.tensors(name, "random state", required, optional=optional)  # type: ignore[misc]
    try:
        py_words = [int(v) for v in tensors["python"].tolist()]
        np_words = tensors["numpy"].numpy()
        np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
        py_gauss = json.loads(meta["python_gauss"])
        state: dict[str, Any] = {
            "python": (int(meta["python_version"]), tuple(py_words), py_gauss),
            "numpy": (np_name, np_words.astype(np.uint32), np_pos, np_has_gauss, np_gauss),
            "torch": tensors["torch"],
        }
        words_ok = all(0 <= v < 2**32 for v in py_words[:-1]) and bool(
            ((np_words >= 0) & (np_words < 2**32)).all()
        )
        if not (words_ok and isinstance(np_pos, int) and 0 <= np_pos <= _MT_WORDS):
            raise ValueError("state words or position out of range")
        random.Random().setstate(state["python"])
        np.random.RandomState().set_state(state["numpy"])
        torch.Generator().set_state(state["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{reader.folder / name} holds no valid random state: {err}"
        ) from None
    cuda = [tensors[f"cuda_{i}"] for i in range(_MAX_CUDA_DEVICES) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        state["cuda"] = cuda
    return state
