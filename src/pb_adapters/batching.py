"""Mixed-task batches: split a batch by task, run each group, put the outputs back in order.

Samples of the same task run together with that task's materialised weights, so each sample gets
exactly what its task gives on its own group; the outputs are reassembled in the original order
and in the base model's own output type (a tensor for timm, a ``ModelOutput`` for transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["group_indices", "merge_outputs", "select_batch"]


def group_indices(names: Sequence[str]) -> dict[str, Tensor]:
    """``{name: indices of the samples of that name}``, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    return {name: torch.tensor(indices, dtype=torch.long) for name, indices in groups.items()}


def _select(value: Any, batch_size: int, index: Tensor) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
        return value.index_select(0, index.to(value.device))
    return value


def select_batch(
    args: tuple[Any, ...], kwargs: dict[str, Any], batch_size: int, index: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The rows ``index`` of every tensor argument whose first dimension is the batch."""
    return (
        tuple(_select(a, batch_size, index) for a in args),
        {k: _select(v, batch_size, index) for k, v in kwargs.items()},
    )


def _merge_tensors(
    parts: list[tuple[Tensor, Tensor]], batch_size: int, pad_last_dim: bool
) -> Tensor:
    first = parts[0][1]
    shape = list(first.shape)
    if pad_last_dim:
        shape[-1] = max(part.shape[-1] for _, part in parts)
        # Tasks with fewer classes are padded with -inf: softmax, argmax and top-k are unchanged.
        out = first.new_full([batch_size, *shape[1:]], float("-inf"))
    else:
        out = first.new_empty([batch_size, *shape[1:]])
    for index, part in parts:
        out[index.to(out.device), ..., : part.shape[-1]] = part
    return out


def merge_outputs(parts: list[tuple[Tensor, Any]], batch_size: int) -> Any:
    """Reassemble per-group outputs (tensors or ``ModelOutput``s) into one batch-ordered output.

    Logits of tasks with different class counts are padded on the right with ``-inf``. A
    ``loss`` (transformers, when labels were given) becomes the sample-weighted mean of the
    groups' mean losses, which is the loss of the whole batch under mean reduction.
    """
    sample = parts[0][1]
    if isinstance(sample, Tensor):
        pad = len({p.shape[1:] for _, p in parts}) > 1
        if pad and len({p.shape[1:-1] for _, p in parts}) > 1:
            raise ValueError("the tasks' outputs differ in more than their class dimension")
        return _merge_tensors(parts, batch_size, pad)
    if is_dataclass(sample):
        merged: dict[str, Any] = {}
        for f in fields(sample):
            values = [(index, getattr(out, f.name)) for index, out in parts]
            present = [v for _, v in values if v is not None]
            if not present:
                merged[f.name] = None
            elif f.name == "loss":
                total = sum(float(len(index)) * loss for index, loss in values)
                merged[f.name] = total / batch_size
            elif isinstance(present[0], Tensor):
                merged[f.name] = merge_outputs(values, batch_size)
            elif isinstance(present[0], tuple):
                merged[f.name] = tuple(
                    merge_outputs([(index, value[i]) for index, value in values], batch_size)
                    for i in range(len(present[0]))
                )
            else:
                merged[f.name] = present[0]
        return type(sample)(**merged)
    raise TypeError(f"cannot merge model outputs of type {type(sample).__name__}")
