"""Mixed-task batches: every sample computed with its own task's weights, in one forward pass.

The batch is reordered once so that the ``k`` tasks present form ``k`` equal groups (padded with
repeats of a group's first sample), then runs through the model once. Each masked layer computes
all groups in one call with the tasks' stacked weights from the serving bank: a convolution with
``k`` times its groups over the samples viewed as ``k`` times the channels, a linear layer as one
batched matrix product. Per-task heads and norms do the same (or run group by group when of a
kind without a grouped form). Outputs are put back in the original order, in the base model's
own output type. Where that route cannot serve (labels given, gradients to trainable tasks, a
bank the layers cannot share), or where the serving cache's ``mixed_mode`` says not to fuse (by
default on the CPU), each task's group runs on its own (:func:`grouped_forward`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .methods.base import AdapterLayer
from .serving import ServingCache

__all__ = [
    "group_indices",
    "grouped_forward",
    "merge_outputs",
    "mixed_batch_forward",
    "select_batch",
]

_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


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


def grouped_forward(
    names: Sequence[str | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    run_group: Callable[[str | None, tuple[Any, ...], dict[str, Any]], Any],
) -> Any:
    """One forward pass per task over its samples (``run_group(task, args, kwargs)``), merged."""
    parts = []
    for name, index in group_indices(names).items():  # type: ignore[arg-type]
        group_args, group_kwargs = select_batch(args, kwargs, len(names), index)
        parts.append((index, run_group(name, group_args, group_kwargs)))
    return merge_outputs(parts, len(names))


def _pad_classes(outs: list[Tensor]) -> list[Tensor]:
    """Right-pad the last dimension with ``-inf`` to the widest (tasks' different class counts)."""
    width = max(out.shape[-1] for out in outs)
    return [F.pad(out, (0, width - out.shape[-1]), value=float("-inf")) for out in outs]


class _Route:
    """One mixed batch's layout: ``k`` groups of ``m`` samples, and the grouped weights.

    *Interleaved* (sample ``j`` of group ``g`` at ``j * k + g``) lets a convolution see the batch
    as ``m`` samples of ``k`` times the channels without a copy; *task-major* (``g * m + j``)
    lets a linear layer see it as ``k`` matrices. The layout the model's masked layers mostly
    need is chosen; the others reorder their input and output.
    """

    def __init__(
        self,
        count: int,
        size: int,
        interleaved: bool,
        weights: list[Tensor],
        serving: ServingCache,
    ) -> None:
        self.k, self.m, self.interleaved = count, size, interleaved
        self.weights = weights
        self.index = serving.layer_index
        self.serving = serving

    # -- layout helpers ---------------------------------------------------------------------
    def groups_first(self, x: Tensor) -> Tensor:
        """``x`` as ``[k, m, ...]``, group by group."""
        if self.interleaved:
            return x.reshape(self.m, self.k, *x.shape[1:]).transpose(0, 1)
        return x.reshape(self.k, self.m, *x.shape[1:])

    def samples_first(self, x: Tensor) -> Tensor:
        """``x`` as ``[m, k, ...]``."""
        if self.interleaved:
            return x.reshape(self.m, self.k, *x.shape[1:])
        return x.reshape(self.k, self.m, *x.shape[1:]).transpose(0, 1)

    def from_groups(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`groups_first` (``y``: ``[k, m, ...]``) in the batch's layout."""
        if self.interleaved:
            y = y.transpose(0, 1)
        return y.reshape(self.k * self.m, *y.shape[2:])

    def from_samples(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`samples_first` (``y``: ``[m, k, ...]``)."""
        if not self.interleaved:
            y = y.transpose(0, 1)
        return y.reshape(self.k * self.m, *y.shape[2:])

    def rows(self, x: Tensor) -> Tensor:
        """``x`` as ``[k, rows, features]``: one matrix per group (strided when interleaved,
        a copy when interleaved samples have more than one row)."""
        if not self.interleaved:
            return x.reshape(self.k, -1, x.shape[-1])
        if x.dim() == 2:
            return x.view(self.m, self.k, x.shape[-1]).transpose(0, 1)
        return self.groups_first(x).reshape(self.k, -1, x.shape[-1])

    def per_group(self, x: Tensor, fn: Callable[[int, Tensor], Tensor]) -> Tensor:
        """``fn(g, samples of group g)`` for every group, reassembled (k calls)."""
        groups = self.groups_first(x)
        outs = [fn(g, groups[g]) for g in range(self.k)]
        if len({out.shape[-1] for out in outs}) > 1:
            outs = _pad_classes(outs)
        return self.from_groups(torch.stack(outs))

    # -- masked layers ----------------------------------------------------------------------
    def layer_forward(self, layer: AdapterLayer, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``layer``'s output, every group with its task's weight, in one call where possible."""
        weight = self.weights[self.index[id(layer)]]
        kind = layer.forward_kind
        base = layer.base_layer
        if kind == "linear" and not args and not kwargs:
            return self._linear(x, weight, base.bias)
        if kind in ("conv", "conv_same") and not args and not kwargs:
            return self._conv(x, weight, base, kind == "conv_same")
        stack = weight.transpose(1, 2) if kind == "linear" else weight
        if kind in ("conv", "conv_same"):
            stack = weight.view(self.k, -1, *weight.shape[1:])
        return self.per_group(x, lambda g, xg: layer._forward_with(base, xg, stack[g]))

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # weight: [k, in, out]
        rows = self.rows(x)
        y = torch.bmm(rows, weight) if bias is None else torch.baddbmm(bias, rows, weight)
        if not self.interleaved:
            return y.view(*x.shape[:-1], y.shape[-1])
        return self.from_groups(y.view(self.k, self.m, *x.shape[1:-1], y.shape[-1]))

    def _conv(self, x: Tensor, weight: Tensor, base: nn.Module, same: bool) -> Tensor:
        # weight: [k * out, in / groups, *kernel]; the samples become m items of k * C channels
        k, m = self.k, self.m
        channels = x.shape[1]
        if self.interleaved:
            grouped = x.reshape(m, k * channels, *x.shape[2:])
        else:
            grouped = self.samples_first(x).reshape(m, k * channels, *x.shape[2:])
        bias = None if base.bias is None else base.bias.repeat(k)
        groups = base.groups * k
        if same:
            conv2d_same = importlib.import_module("timm.layers.conv2d_same").conv2d_same
            y = conv2d_same(grouped, weight, bias, base.stride, base.padding, base.dilation, groups)
        elif base.padding_mode != "zeros":
            grouped = F.pad(grouped, base._reversed_padding_repeated_twice, mode=base.padding_mode)
            y = _CONV[weight.dim()](grouped, weight, bias, base.stride, 0, base.dilation, groups)
        else:
            y = _CONV[weight.dim()](
                grouped, weight, bias, base.stride, base.padding, base.dilation, groups
            )
        out_channels = weight.shape[0] // k
        if self.interleaved:
            return y.reshape(m * k, out_channels, *y.shape[2:])
        return self.from_samples(y.reshape(m, k, out_channels, *y.shape[2:]))

    # -- per-task modules (heads, norms, saved modules) -------------------------------------
    def module_forward(self, modules: list[nn.Module], x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """The output of ``modules[g]`` on group ``g``'s samples, for every group."""
        if not args and not kwargs:
            if all(type(mod).forward is nn.Linear.forward for mod in modules):
                return self._heads(modules, x)
            if self.interleaved and _batch_norms(modules):
                return self._batch_norm(modules, x)
            if not self.interleaved and _layer_norms(modules):
                return self._layer_norm(modules, x)
        return self.per_group(x, lambda g, xg: modules[g](xg, *args, **kwargs))

    def _stacked(self, kind: str, modules: list[nn.Module], build: Callable[[], Any]) -> Any:
        tensors = [t for mod in modules for t in (*mod.parameters(), *mod.buffers())]
        key = (kind, tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in tensors))
        return self.serving.memo(key, build)

    def _heads(self, modules: list[nn.Module], x: Tensor) -> Tensor:
        def build() -> tuple[Tensor, Tensor]:
            width = max(mod.out_features for mod in modules)
            first = modules[0].weight
            weight = first.new_zeros(self.k, width, first.shape[1])
            bias = first.new_full((self.k, 1, width), float("-inf"))  # padded classes: -inf
            with torch.no_grad():
                for g, mod in enumerate(modules):
                    weight[g, : mod.out_features] = mod.weight
                    bias[g, 0, : mod.out_features] = 0 if mod.bias is None else mod.bias
            return weight.transpose(1, 2), bias

        weight, bias = self._stacked("heads", modules, build)
        rows = self.rows(x)
        y = torch.baddbmm(bias, rows, weight)
        if not self.interleaved:
            return y.view(*x.shape[:-1], y.shape[-1])
        return self.from_groups(y.view(self.k, self.m, *x.shape[1:-1], y.shape[-1]))

    def _batch_norm(self, modules: list[nn.Module], x: Tensor) -> Tensor:
        def build() -> list[Tensor | None]:
            parts = []
            for attr in ("running_mean", "running_var", "weight", "bias"):
                values = [getattr(mod, attr) for mod in modules]
                parts.append(None if values[0] is None else torch.cat(values).detach())
            return parts

        mean, var, weight, bias = self._stacked("batch_norm", modules, build)
        grouped = x.reshape(self.m, self.k * x.shape[1], *x.shape[2:])
        y = F.batch_norm(grouped, mean, var, weight, bias, False, 0.0, modules[0].eps)
        return y.reshape(x.shape)

    def _layer_norm(self, modules: list[nn.Module], x: Tensor) -> Tensor:
        def build() -> tuple[Tensor, Tensor]:
            weight = torch.stack([mod.weight for mod in modules]).detach()
            bias = torch.stack([mod.bias for mod in modules]).detach()
            return weight.view(self.k, 1, -1), bias.view(self.k, 1, -1)

        weight, bias = self._stacked("layer_norm", modules, build)
        first = modules[0]
        y = F.layer_norm(x, first.normalized_shape, None, None, first.eps)
        rows = y.view(self.k, -1, weight.shape[-1])
        return torch.addcmul(bias, rows, weight).view(x.shape)


def _batch_norms(modules: list[nn.Module]) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    first = modules[0]
    return all(
        isinstance(mod, _BatchNorm)
        and not mod.training
        and mod.running_mean is not None
        and mod.eps == first.eps
        and mod.num_features == first.num_features
        and (mod.weight is None) == (first.weight is None)
        for mod in modules
    )


def _layer_norms(modules: list[nn.Module]) -> bool:
    first = modules[0]
    return all(
        type(mod) is nn.LayerNorm
        and mod.elementwise_affine
        and mod.bias is not None
        and mod.normalized_shape == first.normalized_shape
        and len(mod.normalized_shape) == 1
        and mod.eps == first.eps
        for mod in modules
    )


class _MixedModule(nn.Module):
    """Stands in for a per-task module during a mixed batch: each group gets its task's."""

    def __init__(self, route: _Route, members: list[nn.Module]) -> None:
        super().__init__()
        self.route = route
        self.members = members  # a plain list: not registered, the tasks keep owning them

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Every group through its own task's module."""
        return self.route.module_forward(self.members, x, *args, **kwargs)


def _layout(
    names: Sequence[str | None], order: list[str | None], interleaved: bool
) -> tuple[int, list[int], list[int]]:
    """``(m, gather, scatter)``: the group size, the source sample of every padded position,
    and the padded position of every sample."""
    count = len(order)
    group = {name: g for g, name in enumerate(order)}
    members: list[list[int]] = [[] for _ in order]
    for index, name in enumerate(names):
        members[group[name]].append(index)
    size = max(len(rows) for rows in members)
    gather = [0] * (size * count)
    scatter = [0] * len(names)
    for g, rows in enumerate(members):
        for j in range(size):
            position = j * count + g if interleaved else g * size + j
            source = rows[j] if j < len(rows) else rows[0]  # padding repeats a group sample
            gather[position] = source
            if j < len(rows):
                scatter[source] = position
    return size, gather, scatter


def _gather(value: Any, batch: int, index: Tensor) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.index_select(0, index.to(value.device))
    return value


def _scatter(value: Any, padded: int, index: Tensor) -> Any:
    """The samples' rows of an output of the padded batch, in their original order."""
    if isinstance(value, Tensor):
        if value.dim() > 0 and value.shape[0] == padded:
            return value.index_select(0, index.to(value.device))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_scatter(v, padded, index) for v in value)
    if is_dataclass(value) and isinstance(value, dict):  # transformers' ModelOutput
        return type(value)(**{k: _scatter(v, padded, index) for k, v in value.items()})
    return value


def mixed_batch_forward(
    serving: ServingCache,
    names: Sequence[str | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    run: Callable[..., Any],
    run_group: Callable[[str | None, tuple[Any, ...], dict[str, Any]], Any],
    modules_of: Callable[[str | None], dict[str, nn.Module]],
    get_module: Callable[[str], nn.Module],
    set_module: Callable[[str, nn.Module], None],
) -> Any:
    """``run(*args, **kwargs)`` with sample ``i`` computed by task ``names[i]`` (``None``: the
    plain base), in one forward pass where possible and wanted
    (:meth:`~pb_adapters.serving.ServingCache.fuses_mixed`), else one per task.

    ``modules_of(task)`` maps each swappable module path (heads, norms) to the task's module;
    ``get_module`` / ``set_module`` read and replace the module at a path.
    """
    tasks = list(dict.fromkeys(names))
    device = next(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor)).device
    if "labels" in kwargs or len(tasks) == 1 or not serving.fuses_mixed(device):
        return grouped_forward(names, args, kwargs, run_group)
    prepared = serving.prepare_mixed(tasks, allow_trainable=not torch.is_grad_enabled())
    if prepared is None:
        return grouped_forward(names, args, kwargs, run_group)
    order, weights = prepared
    layers = serving.layers
    swapped: dict[str, nn.Module] = {}
    try:
        # Extra operations per layer away from its layout: a linear layer reorders its input
        # and output in the interleaved one (about 6), a convolution in the task-major one (8).
        linear = sum(layer.forward_kind == "linear" for layer in layers)
        convs = sum(layer.forward_kind in ("conv", "conv_same") for layer in layers)
        interleaved = 6 * linear <= 8 * convs
        size, gather, scatter = _layout(names, order, interleaved)
        route = _Route(len(order), size, interleaved, weights, serving)
        gather_index = torch.tensor(gather, device=device)
        scatter_index = torch.tensor(scatter, device=device)
        per_task = [modules_of(task) for task in order]
        for path in per_task[0]:
            members = [modules[path] for modules in per_task]
            if any(member is not members[0] for member in members):
                swapped[path] = get_module(path)
                set_module(path, _MixedModule(route, members))
        for layer in layers:
            layer._route = route
        batch = len(names)
        out = run(
            *(_gather(a, batch, gather_index) for a in args),
            **{k: _gather(v, batch, gather_index) for k, v in kwargs.items()},
        )
    finally:
        for layer in layers:
            layer._route = None
        for path, module in swapped.items():
            set_module(path, module)
        serving.finish_mixed()
    return _scatter(out, len(gather), scatter_index)
