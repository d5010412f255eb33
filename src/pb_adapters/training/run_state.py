"""Where a training run stands, as one object a checkpoint saves and a resumed run restores.

:class:`RunState` holds the epoch and batch reached, the optimiser step, the running loss, the
best epoch so far (its key, metrics and trainable state) and the history of finished epochs. It
is written into every checkpoint as ``trainer_state.json`` (plus the best epoch's tensors as
``best_state.safetensors``) and read back with :meth:`RunState.load`. The random states are per
process, so each process writes its own ``rng_state_<process>.safetensors``
(:func:`save_rng_state`). Nothing here is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BEST_STATE_FILE",
    "STATE_FILE",
    "RunState",
    "load_rng_state",
    "rng_state",
    "rng_state_file",
    "save_rng_state",
    "set_rng_state",
]

#: JSON state of a checkpoint; written last, so its presence marks a complete checkpoint.
STATE_FILE = "trainer_state.json"
#: The best epoch's trainable parameters and floating-point buffers.
BEST_STATE_FILE = "best_state.safetensors"


@dataclass
class RunState:
    """The progress of one training run.

    Attributes:
        epoch: the epoch in progress (1-based).
        batches_in_epoch: batches of that epoch already trained.
        global_step: optimiser steps taken.
        accelerate_step: Accelerate's micro-batch counter, which decides when gradient
            accumulation syncs (its own copy lives in a pickle that recent torch will not load).
        ema: running mean of the training loss (progress bar, trackers).
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

    def save(self, folder: Path, *, args: dict[str, Any]) -> None:
        """Write ``best_state.safetensors`` (if any), then ``trainer_state.json`` with ``args``."""
        from safetensors.torch import save_file

        if self.best_state is not None:
            tensors = {k: v.contiguous().cpu() for k, v in self.best_state.items()}
            save_file(tensors, folder / BEST_STATE_FILE)
        text = json.dumps({**self.to_dict(), "args": args}, indent=2) + "\n"
        (folder / STATE_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> RunState:
        """The state :meth:`save` wrote into ``folder``."""
        from safetensors.torch import load_file

        state = cls.from_dict(json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
        if (folder / BEST_STATE_FILE).is_file():
            state.best_state = load_file(folder / BEST_STATE_FILE)
        return state


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
    """Restore states taken by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_file(folder: Path, process_index: int) -> Path:
    """Where process ``process_index`` keeps its random states in a checkpoint."""
    return folder / f"rng_state_{process_index}.safetensors"


def save_rng_state(path: Path) -> None:
    """Write the global RNG states as safetensors (tensors + string metadata, no pickle).

    Accelerate's own RNG file is a pickle that recent torch refuses to load with
    ``weights_only=True`` (it then silently skips it), so the trainer keeps its own copy.
    """
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


def load_rng_state(path: Path) -> None:
    """Restore the RNG states written by :func:`save_rng_state`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
    state: dict[str, Any] = {
        "python": (
            int(meta["python_version"]),
            tuple(int(v) for v in tensors["python"].tolist()),
            json.loads(meta["python_gauss"]),
        ),
        "numpy": (
            np_name,
            tensors["numpy"].numpy().astype(np.uint32),
            np_pos,
            np_has_gauss,
            np_gauss,
        ),
        "torch": tensors["torch"],
    }
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        state["cuda"] = cuda
    set_rng_state(state)
