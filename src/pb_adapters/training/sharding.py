"""Fully sharded data parallel (FSDP) training of adapters.

Under FSDP each process keeps only a slice of every parameter: the frozen base weights, the
float32 mask scores and the optimiser's moments are all split across processes, and a layer's
whole weights exist only while it computes. That lets a base train when its weights, scores and
Adam moments do not fit one device. Accelerate applies the sharding (``accelerate launch
--use_fsdp --fsdp_version 2 ...``); this module holds what the trainer does differently then:

* :func:`check_supported` refuses FSDP1, before anything is written.
* :func:`keep_weights_sharded` stops adapter layers from caching a full-size masked weight for
  evaluation, which would give every process a whole copy of the base again.
* :func:`reshard`, :func:`local_tensor`, :func:`save_best_slice` and :func:`load_best_slice`:
  each process snapshots, restores and checkpoints the slice of the best epoch's state it holds.
* :func:`full_parameters` gathers the whole model onto the main process's CPU for the time it
  takes to write the artifact, so the artifact is byte for byte the one a DDP run writes.
* :func:`cpu_fsdp_accelerator` shards across CPU processes, which Accelerate's launcher does not.

Mask layers hold a frozen weight and trainable scores side by side. FSDP2 (``fully_shard``)
shards each parameter on its own, so the mix is no problem and every process holds an equal
slice of the scores and of their Adam moments. FSDP1 flattens a unit's parameters into one
tensor: it needs ``use_orig_params=True`` for the mix, may put all of a unit's scores (and their
optimiser state) on one process, and gathers a whole state only through its outermost wrapper,
which Accelerate's unwrapped model no longer has; it is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pb_adapters.errors import ConfigError
from pb_adapters.training.run_state import BEST_STATE_FILE

__all__ = [
    "check_supported",
    "cpu_fsdp_accelerator",
    "full_parameters",
    "is_sharded",
    "keep_weights_sharded",
    "load_best_slice",
    "local_tensor",
    "reshard",
    "save_best_slice",
    "uses_fsdp",
]


def _fsdp_types() -> tuple[type, ...]:
    """FSDP2's module class and FSDP1's wrapper class (empty where torch lacks them)."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # torch built without distributed support
        return ()
    return FSDPModule, FullyShardedDataParallel


def is_sharded(model: nn.Module) -> bool:
    """Whether any part of ``model`` is sharded by FSDP (either version)."""
    kinds = _fsdp_types()
    return bool(kinds) and any(isinstance(m, kinds) for m in model.modules())


def uses_fsdp(accelerator: Any) -> bool:
    """Whether ``accelerator`` shards models with FSDP."""
    return getattr(accelerator, "distributed_type", None) == "FSDP"  # a str enum in Accelerate


def check_supported(accelerator: Any) -> None:
    """Raise :class:`~pb_adapters.errors.ConfigError` if ``accelerator`` is set up for FSDP1.

    Called before training starts, so a refused run leaves nothing behind.
    """
    if not uses_fsdp(accelerator):
        return
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if getattr(plugin, "fsdp_version", 2) != 2:
        raise ConfigError(
            "adapter training supports FSDP2 only: launch with `accelerate launch --use_fsdp "
            "--fsdp_version 2 ...` (or `fsdp_version: 2` in the Accelerate config file)"
        )


def cpu_fsdp_accelerator(plugin: Any = None, **kwargs: Any) -> Any:
    """An ``accelerate.Accelerator`` that shards with FSDP2 across CPU processes (gloo).

    Accelerate selects FSDP only when the processes have a GPU-type device; on CPUs it falls
    back to DDP without a word, ``--use_fsdp`` or not. This sets the state its launcher sets on
    GPUs, so that Accelerate's own FSDP2 code runs on CPU tensors: for tests and memory
    measurements on machines without GPUs. Start the processes with ``accelerate launch
    --multi_gpu`` or ``torchrun``. ``plugin``: a ``FullyShardedDataParallelPlugin`` with
    ``fsdp_version=2`` (default: Accelerate's defaults); ``kwargs`` go to ``Accelerator``.
    """
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True, **kwargs)
    # AcceleratorState copies PartialState's fields each time it is built: set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin or FullyShardedDataParallelPlugin(fsdp_version=2)
    if not accelerator.is_fsdp2:
        raise ConfigError("cpu_fsdp_accelerator needs an FSDP2 plugin (fsdp_version=2)")
    return accelerator


def keep_weights_sharded(model: nn.Module) -> None:
    """Under FSDP, make every adapter layer in ``model`` compute its weight at each forward.

    In eval mode a layer normally keeps its masked weight between forwards; under FSDP that
    cache would be a full, unsharded copy of the layer on every process. Without FSDP this does
    nothing.
    """
    from pb_adapters.methods.base import AdapterLayer

    if not is_sharded(model):
        return
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.set_merged_cache(False)


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 unit of ``model`` back in its sharded state; without FSDP, nothing.

    The outermost unit stays gathered after a forward (FSDP2 saves the all-gather its backward
    would need); its registered parameters are then whole, temporary tensors, which a snapshot
    must not take and a restore must not write into.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed support
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds: the local shard of an FSDP2 ``DTensor``, else
    the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _slice_file(folder: Path, process_index: int) -> Path:
    """``best_state.safetensors`` -> ``best_state.shard-00001.safetensors``."""
    name = Path(BEST_STATE_FILE)
    return folder / f"{name.stem}.shard-{process_index:05d}{name.suffix}"


def save_best_slice(
    best_state: dict[str, torch.Tensor] | None, folder: Path, process_index: int
) -> None:
    """Write this process's slice of the best epoch's state into checkpoint ``folder``."""
    from safetensors.torch import save_file

    if best_state is not None:
        tensors = {k: local_tensor(v).contiguous().cpu() for k, v in best_state.items()}
        save_file(tensors, _slice_file(folder, process_index))


def load_best_slice(folder: Path, process_index: int) -> dict[str, torch.Tensor] | None:
    """This process's slice of the best epoch's state in checkpoint ``folder`` (None if absent)."""
    from safetensors.torch import load_file

    path = _slice_file(folder, process_index)
    return load_file(path) if path.is_file() else None


@contextlib.contextmanager
def full_parameters(model: nn.Module, is_main_process: bool) -> Iterator[None]:
    """Within the block, the main process's ``model`` holds every parameter whole, on the CPU.

    Every process must enter the block (gathering is collective); the other processes keep
    their slices. Without FSDP this does nothing. The sharded parameters are back in place when
    the block ends, so training or evaluation can go on.
    """
    if not is_sharded(model):
        yield
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # cpu_offload: the whole state lands on the main process's CPU only, never on a device
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not is_main_process:
        yield
        return
    replaced = _swap_in(model, list(full.items()))
    try:
        yield
    finally:
        # backwards: a module registered under two names gets its own tensor back last
        _swap_in(model, replaced[::-1])


def _swap_in(
    model: nn.Module, tensors: list[tuple[str, torch.Tensor]]
) -> list[tuple[str, torch.Tensor]]:
    """Register ``tensors`` (by state-dict name) in place of ``model``'s parameters and buffers;
    return what they replaced, in the same order."""
    replaced: list[tuple[str, torch.Tensor]] = []
    for name, value in tensors:
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if attr in module._parameters:
            old = module._parameters[attr]
            replaced.append((name, old))
            if not isinstance(value, nn.Parameter):
                value = nn.Parameter(value, requires_grad=old.requires_grad)
            module._parameters[attr] = value
        elif attr in module._buffers:
            replaced.append((name, module._buffers[attr]))
            module._buffers[attr] = value
    return replaced
