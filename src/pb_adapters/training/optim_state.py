"""Model, optimiser, schedule and loss-scaler state as safetensors + JSON, checked before applied.

A checkpoint stores:

* ``model.safetensors``: every parameter and persistent buffer of the model by its
  ``state_dict`` name (a tensor registered under two names, such as the active task's head, once);
* ``optimizer.safetensors``: the optimiser's per-parameter state, one tensor per parameter and
  key, named ``<parameter name>/<key>`` (Adam: ``step``, ``exp_avg``, ``exp_avg_sq``; SGD:
  ``momentum_buffer``);
* ``optimizer.json``: the optimiser's class, its parameter groups (name, hyperparameters,
  parameter names in order), which parameters have which state, and the mixed-precision loss
  scaler's state;
* ``scheduler.json``: the learning-rate schedule's position (``last_epoch``, base and last rates).

Under FSDP every process writes the slices it holds of the model and the optimiser state as
``model.shard-<process>.safetensors`` and ``optimizer.shard-<process>.safetensors`` (same names
inside); a sharded run resumes with the same number of processes. Parameters are identified by
their names in the model, never by position. :func:`read_training_state` checks every name,
dtype, shape and hyperparameter against the live model, optimiser and schedule and returns a
:class:`TrainingState`; only its :meth:`~TrainingState.apply` changes anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from pb_adapters.training.checkpoint_io import CheckpointReader, shard_file
from pb_adapters.training.errors import CheckpointError
from pb_adapters.training.sharding import local_tensor

__all__ = [
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "OPTIMIZER_INDEX_FILE",
    "SCHEDULER_FILE",
    "TrainingState",
    "model_state",
    "read_training_state",
    "write_training_state",
]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_INDEX_FILE = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"

# The per-parameter state each supported optimiser keeps (besides Adam's amsgrad buffer).
_STATE_KEYS: dict[str, tuple[str, ...]] = {
    "Adam": ("step", "exp_avg", "exp_avg_sq"),
    "SGD": ("momentum_buffer",),
}


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers by name, each tensor once.

    A tensor registered under several names (the same storage, offset, shape and strides) keeps
    its first name; restoring that name restores the others.
    """
    seen: set[tuple[Any, ...]] = set()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not isinstance(tensor, torch.Tensor):
            continue  # a module's extra state: none of the models trained here has one
        local = local_tensor(tensor)  # FSDP: the slice this process holds
        key = (
            local.device,
            local.untyped_storage().data_ptr(),
            local.storage_offset(),
            tuple(local.shape),
            local.stride(),
            local.dtype,
        )
        if local.numel() and key in seen:
            continue
        seen.add(key)
        state[name] = tensor
    return state


def _to_file(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies safetensors can write (contiguous, no two sharing memory)."""
    out: dict[str, torch.Tensor] = {}
    storages: set[tuple[Any, int]] = set()
    for name, tensor in tensors.items():
        t = local_tensor(tensor).detach().to("cpu").contiguous()
        ptr = (t.device, t.untyped_storage().data_ptr())
        if t.numel() and ptr in storages:
            t = t.clone()  # an overlapping view of a tensor already written
        storages.add((t.device, t.untyped_storage().data_ptr()))
        out[name] = t
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def _parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _optimizer_index(
    optimizer: torch.optim.Optimizer, names: dict[int, str]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The optimiser as JSON (groups, which state each parameter has) and its state tensors."""
    groups, state_keys, tensors = [], {}, {}
    for group in optimizer.param_groups:
        groups.append(
            {
                "params": [names[id(p)] for p in group["params"]],
                "hyperparameters": {k: _json_value(v) for k, v in group.items() if k != "params"},
            }
        )
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            name = names[id(p)]
            state_keys[name] = sorted(state)
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"optimiser state {key!r} of {name} is not a tensor")
                tensors[f"{name}/{key}"] = value
    index = {"class": type(optimizer).__name__, "param_groups": groups, "state": state_keys}
    return index, tensors


def write_training_state(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any = None,
    *,
    shard: int | None = None,
    index: bool = True,
) -> list[str]:
    """Write model, optimiser and schedule state into ``folder``; return the file names.

    ``shard``: this process's slices under FSDP (every process calls this). ``index``: also
    write the JSON files (the optimiser index and the schedule, the same on every process).
    """
    import json

    names = [shard_file(MODEL_FILE, shard), shard_file(OPTIMIZER_FILE, shard)]
    save_file(_to_file(model_state(model)), folder / names[0])
    described, tensors = _optimizer_index(optimizer, _parameter_names(model))
    save_file(_to_file(tensors), folder / names[1])
    if index:
        described["grad_scaler"] = scaler.state_dict() if scaler is not None else None
        (folder / OPTIMIZER_INDEX_FILE).write_text(json.dumps(described, indent=1) + "\n")
        schedule = {
            k: _json_value(v) for k, v in scheduler.state_dict().items() if k != "lr_lambdas"
        }
        (folder / SCHEDULER_FILE).write_text(json.dumps(schedule, indent=1) + "\n")
        names += [OPTIMIZER_INDEX_FILE, SCHEDULER_FILE]
    return names


# ---------------------------------------------------------------------------- checks
def _like(saved: Any, live: Any, where: str) -> Any:
    """``saved`` (from JSON) checked to have the form of the ``live`` value it replaces: the same
    kind (bool, int, number, string, None, list of the same length) and finite, non-negative
    numbers (no optimiser or schedule value here is negative). Returns it in ``live``'s type."""
    if isinstance(live, bool) or live is None or isinstance(live, str):
        if type(saved) is not type(live):
            raise CheckpointError(f"{where} is {saved!r}, expected a value like {live!r}")
        return saved
    if isinstance(live, (tuple, list)):
        if not isinstance(saved, list) or len(saved) != len(live):
            raise CheckpointError(f"{where} is {saved!r}, expected {len(live)} values")
        items = [
            _like(s, v, f"{where}[{i}]") for i, (s, v) in enumerate(zip(saved, live, strict=True))
        ]
        return tuple(items) if isinstance(live, tuple) else items
    if isinstance(live, torch.Tensor):
        live = live.item()
    if isinstance(live, (int, float)):
        number = isinstance(saved, (int, float)) and not isinstance(saved, bool)
        if not number or (isinstance(live, int) and not isinstance(saved, int)):
            raise CheckpointError(f"{where} is {saved!r}, expected a number like {live!r}")
        try:  # JSON integers have no bound: float() may overflow
            finite = math.isfinite(float(saved))
        except OverflowError:
            finite = False
        if not finite or saved < 0:
            raise CheckpointError(f"{where} is {saved!r}: must be finite and not negative")
        return type(live)(saved)
    raise CheckpointError(f"{where}: cannot check a value of type {type(live).__name__}")


def _like_dict(saved: Any, live: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(saved, dict) or set(saved) != set(live):
        got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"{where} has keys {got}, expected {sorted(live)}")
    return {k: _like(saved[k], live[k], f"{where} {k!r}") for k in live}


def _state_keys(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> set[str]:
    keys = set(_STATE_KEYS[type(optimizer).__name__])
    if group.get("amsgrad"):
        keys.add("max_exp_avg_sq")
    return keys


@dataclass
class TrainingState:
    """Checked model, optimiser, schedule and scaler state, ready to apply."""

    model: nn.Module
    model_tensors: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    optimizer_state: dict[str, Any]
    scheduler: Any
    scheduler_state: dict[str, Any]
    scaler: Any
    scaler_state: dict[str, Any] | None

    @property
    def schedule_step(self) -> int:
        """The schedule's position (the optimiser steps taken)."""
        return int(self.scheduler_state["last_epoch"])

    def apply(self) -> None:
        """Copy everything into the live model, optimiser, schedule and scaler."""
        live = model_state(self.model)
        with torch.no_grad():
            for name, tensor in self.model_tensors.items():
                local_tensor(live[name]).copy_(tensor)  # FSDP: this process's slice
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for position, entries in self.optimizer_state["state"].items():
            for key, value in entries.items():
                if key != "step":  # moments are laid out like their parameter (sharded or not)
                    entries[key] = _like_parameter(value, params[position])
        self.optimizer.load_state_dict(self.optimizer_state)
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **self.scheduler_state})
        if self.scaler is not None and self.scaler_state is not None:
            self.scaler.load_state_dict(self.scaler_state)


def _like_parameter(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` (this process's part) as a tensor laid out like ``param``: under FSDP, a
    ``DTensor`` sharded as the parameter is."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:
        return value
    from torch.distributed.tensor import DTensor

    local = value.to(local_tensor(param).device)
    return DTensor.from_local(
        local, mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def _local_spec(tensor: torch.Tensor) -> tuple[torch.dtype, tuple[int, ...]]:
    return tensor.dtype, tuple(local_tensor(tensor).shape)


def _read_model(
    reader: CheckpointReader, model: nn.Module, shard: int | None
) -> dict[str, torch.Tensor]:
    """The model's tensors (this process's slices with ``shard``); parameters must be finite
    (buffers may hold infinities, such as attention masks)."""
    name = shard_file(MODEL_FILE, shard)
    expected = {n: _local_spec(t) for n, t in model_state(model).items()}
    tensors = reader.tensors(name, "model state", expected)[0]
    parameters = {n for n, _ in model.named_parameters()}
    for key, tensor in tensors.items():
        if key in parameters and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{reader.folder / name}: parameter {key!r} is not finite")
    return tensors


def _read_groups(index: dict[str, Any], optimizer: torch.optim.Optimizer, names: dict[int, str]):
    """The saved parameter groups as torch's ``param_groups`` (parameters as positions)."""
    saved = index.get("param_groups")
    if not isinstance(saved, list) or len(saved) != len(optimizer.param_groups):
        raise CheckpointError(
            f"the checkpoint's optimiser has {len(saved) if isinstance(saved, list) else '?'} "
            f"parameter groups, this run's {len(optimizer.param_groups)}"
        )
    groups, position = [], 0
    for i, (entry, group) in enumerate(zip(saved, optimizer.param_groups, strict=True)):
        live_names = [names[id(p)] for p in group["params"]]
        where = f"optimiser group {group.get('name', i)!r}"
        if not isinstance(entry, dict) or entry.get("params") != live_names:
            raise CheckpointError(f"{where} holds other parameters than this run's")
        live = {k: v for k, v in group.items() if k != "params"}
        hyper = _like_dict(entry.get("hyperparameters"), live, f"{where} hyperparameter")
        groups.append({**hyper, "params": list(range(position, position + len(live_names)))})
        position += len(live_names)
    return groups


def _check_state_tensor(key: str, tensor: torch.Tensor) -> None:
    field = key.rpartition("/")[2]
    if not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"optimiser state {key!r} holds non-finite values")
    if field == "step" and (float(tensor) < 0 or float(tensor) != int(float(tensor))):
        raise CheckpointError(f"optimiser step count {key!r} is {float(tensor)}")
    if field.endswith("exp_avg_sq") and bool((tensor < 0).any()):  # a running mean of squares
        raise CheckpointError(f"optimiser state {key!r} holds negative values")


def _read_optimizer(
    reader: CheckpointReader,
    index: Any,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    shard: int | None,
) -> dict[str, Any]:
    """The optimiser's state dict (torch's layout, this process's slices with ``shard``), every
    entry checked against ``optimizer``."""
    kind = type(optimizer).__name__
    if not isinstance(index, dict) or index.get("class") != kind or kind not in _STATE_KEYS:
        raise CheckpointError(f"the checkpoint's optimiser is not this run's {kind}")
    names = _parameter_names(model)
    groups = _read_groups(index, optimizer, names)
    params = {names[id(p)]: (p, g) for g in optimizer.param_groups for p in g["params"]}
    positions = {name: i for i, name in enumerate(params)}
    keys = index.get("state")
    if not isinstance(keys, dict):
        raise CheckpointError("the optimiser index has no per-parameter state list")
    expected: dict[str, tuple[torch.dtype | None, tuple[int, ...]]] = {}
    for name, state_keys in keys.items():
        if name not in params:
            raise CheckpointError(f"optimiser state for {name!r}, which this run does not train")
        param, group = params[name]
        wanted = _state_keys(optimizer, group)
        if not isinstance(state_keys, list) or not all(isinstance(k, str) for k in state_keys):
            raise CheckpointError(f"optimiser state of {name!r} has keys {state_keys!r}")
        if len(state_keys) != len(wanted) or set(state_keys) != wanted:
            raise CheckpointError(f"optimiser state of {name!r} has keys {state_keys!r}")
        for key in state_keys:
            expected[f"{name}/{key}"] = (None, ()) if key == "step" else _local_spec(param)
    file = shard_file(OPTIMIZER_FILE, shard)
    tensors = reader.tensors(file, "optimiser state", expected)[0]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _check_state_tensor(key, tensor)
        name, _, field = key.rpartition("/")
        state.setdefault(positions[name], {})[field] = tensor
    return {"state": state, "param_groups": groups}


def read_training_state(
    reader: CheckpointReader,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any = None,
    *,
    shard: int | None = None,
) -> TrainingState:
    """Read and check model, optimiser, schedule and scaler state (this process's slices of
    the model and optimiser with ``shard``); change nothing."""
    tensors = _read_model(reader, model, shard)
    index = reader.json(OPTIMIZER_INDEX_FILE, "optimiser index")
    optimizer_state = _read_optimizer(reader, index, optimizer, model, shard)
    live = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    schedule = _like_dict(reader.json(SCHEDULER_FILE, "schedule"), live, "the schedule's")
    saved_scaler = index.get("grad_scaler")
    scaler_state = None
    if scaler is not None:
        scaler_state = _like_dict(saved_scaler, scaler.state_dict(), "the loss scaler's")
    elif saved_scaler:
        raise CheckpointError("the checkpoint was trained with fp16 loss scaling, this run is not")
    return TrainingState(
        model, tensors, optimizer, optimizer_state, scheduler, schedule, scaler, scaler_state
    )
