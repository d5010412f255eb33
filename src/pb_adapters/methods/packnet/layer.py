"""The PackNet layer: one packed weight tensor and an owner index shared by every task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ArtifactError, ConfigError
from ...utils.bits import (
    bits_for_values,
    pack_uints,
    packed_size,
    padding_bits_clear,
    unpack_uints,
)
from ..base import AdapterLayer, BufferDict, WeightWriter, flat_views, staging_dtype
from .config import PackNetConfig

__all__ = ["PackNetLayer"]


class PackNetLayer(AdapterLayer):
    """A Conv/Linear layer whose weights are packed, task after task, into one tensor.

    Shared by every task of the layer: ``packed`` (the weight-shaped tensor of kept values, in the
    base dtype; 0 where no task owns the entry) and ``owner`` (``uint8``: 0 for a free or pruned
    entry, ``k`` for an entry kept by task ``k``). Task ``k`` computes with
    ``packed * (1 <= owner <= k)``. The base layer is never written: the plain base, and adapters
    of other wrappers, still see the pristine pretrained weights.

    While task ``k`` trains it also holds ``free[k]`` (a trainable, weight-shaped parameter that
    starts from the pretrained base weights) and ``claims[k]`` (the entries it may use: the free
    ones, and after pruning only those it kept). The layer then computes
    ``where(1 <= owner < k, packed, free * claim)``: the gradient of every other entry is exactly
    zero and the weights of earlier tasks are buffers no optimiser can reach, so no learning rate,
    momentum, weight decay or Adam moment can move them.
    """

    encoding = "packnet-owner"
    shared_state = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.register_buffer("packed", None)
        self.register_buffer("owner", None)
        self.free = nn.ParameterDict()
        self.claims = BufferDict()
        # per training task, entries owned by earlier tasks (fixed while it trains; kept so that
        # each training forward costs one select and one multiply)
        self.earlier = BufferDict()
        self.task_index: dict[str, int] = {}  # adapter name -> its slot k in the owner index

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        """The layer's tasks, in the order they were packed."""
        return sorted(self.task_index, key=self.task_index.__getitem__)

    def next_index(self) -> int:
        """The slot the next task gets: one above every slot used so far."""
        used = max(self.task_index.values(), default=0)
        if self.owner is not None and self.owner.numel():
            used = max(used, int(self.owner.max()))
        return used + 1

    def _ensure_storage(self) -> None:
        if self.packed is None:
            weight = self.base_layer.weight
            self.packed = torch.zeros_like(weight, memory_format=torch.contiguous_format)
            self.owner = torch.zeros(weight.shape, dtype=torch.uint8, device=weight.device)

    def add_adapter(self, name: str, config: PackNetConfig) -> None:
        """Start task ``name`` in the next free slot, training every weight no task owns yet.

        The slot is written into ``config.task_index`` (the wrapper hands every layer the same
        config, so all layers agree on it).
        """
        training = [n for n in self.free if n != name]
        if training:
            raise ConfigError(
                f"task {training[0]!r} is still training; finish it first (prune and "
                "finalize_task) so that its weights are packed before another task starts"
            )
        self.delete_adapter(name)
        index = self.next_index()
        if config.task_index is None:
            config.task_index = index
        elif config.task_index != index:
            raise ConfigError(
                f"config.task_index is {config.task_index} but the next free slot is {index}; "
                "leave task_index unset"
            )
        if index > 255:
            raise ConfigError("a packed network holds at most 255 tasks")
        self._ensure_storage()
        weight = self.base_layer.weight
        self.free[name] = nn.Parameter(weight.detach().clone())
        self.claims[name] = self.owner == 0
        self.earlier[name] = self.owner != 0
        self.task_index[name] = index

    def delete_adapter(self, name: str) -> None:
        """Forget task ``name``; the weights of the newest task are released for later tasks.

        Weights of an older task stay packed (later tasks compute with them).
        """
        if name not in self.task_index:
            return
        index = self.task_index.pop(name)
        for store in (self.free, self.claims, self.earlier):
            if name in store:
                del store[name]
        if index > max(self.task_index.values(), default=0) and self.owner is not None:
            with torch.no_grad():
                released = self.owner >= index
                self.owner.masked_fill_(released, 0)
                self.packed.masked_fill_(released, 0)
        if self.active_adapter == name:
            self.set_adapter(None)

    def is_trainable(self, name: str) -> bool:
        """True while task ``name`` trains (before :meth:`finalize`)."""
        return name in self.free

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        """The free weights task ``name`` trains (empty once it is packed)."""
        return [self.free[name]] if name in self.free else []

    def state_tensors(self, name: str) -> list[Tensor]:
        """The shared packed weights and owner index, plus the training state of ``name``."""
        tensors = [self.packed, self.owner]
        if name in self.free:
            tensors += [self.free[name], self.claims[name], self.earlier[name]]
        return tensors

    # -- the weight -------------------------------------------------------------------------
    def _used(self, index: int) -> Tensor:
        return (self.owner > 0) & (self.owner <= index)

    def effective_weight(self, name: str) -> Tensor:
        """Task ``name``'s weight; differentiable with respect to its free weights while training."""
        index = self.task_index[name]
        if name in self.free:
            free = self.free[name]
            return torch.where(self.earlier[name], self.packed, free * self.claims[name])
        return torch.where(self._used(index), self.packed, torch.zeros_like(self.packed))

    @classmethod
    def inference_writer(
        cls, layers: Sequence[AdapterLayer], name: str, shared: dict[Any, Any]
    ) -> WeightWriter:
        """All layers' weights of packed task ``name`` at once: ``packed * (owner <= k)`` over
        the joined owner indices (``packed`` is 0 wherever no task owns the entry), one
        comparison and one multi-tensor product. Equal to :meth:`effective_weight`."""
        ready = cls.batchable(
            layers, name, shared, lambda layer: layer.packed, lambda layer: layer.task_index[name]
        )
        if ready is None:
            return super().inference_writer(layers, name, shared)
        index, sources = ready
        owners = flat_views([layer.owner for layer in layers], shared)
        numels = [source.numel() for source in sources]
        staging = staging_dtype(sources[0].device, sources[0].dtype, torch.bool)

        def write(targets: Sequence[Tensor], joined: Tensor | None) -> None:
            with torch.no_grad():
                keep = torch.cat(owners) <= index
                if joined is not None:
                    joined.copy_(keep)
                else:
                    torch._foreach_copy_(list(targets), list(keep.to(staging).split(numels)))
                torch._foreach_mul_(list(targets), sources)

        return write

    def used_entries(self, name: str) -> Tensor:
        """Boolean tensor of the entries task ``name`` computes with (the rest are zero for it)."""
        index = self.task_index[name]
        if name in self.free:
            return self.earlier[name] | self.claims[name]
        return self._used(index)

    def mask_counts(self, name: str) -> tuple[int, int]:
        """``(entries task name does not use, weights)``."""
        numel = self.base_layer.weight.numel()
        return numel - int(self.used_entries(name).sum()), numel

    # -- the PackNet schedule ---------------------------------------------------------------
    def prune(self, name: str, ratio: float) -> float:
        """Release the ``ratio`` smallest-magnitude of the weights task ``name`` trains.

        Exactly ``round(ratio * n)`` of its ``n`` claimed entries are released (ties broken by
        position), set to 0 and never used by it again. Returns the fraction released.
        """
        if name not in self.free:
            raise ConfigError(f"task {name!r} is packed already; only a training task is pruned")
        claim = self.claims[name]
        positions = claim.reshape(-1).nonzero().squeeze(1)
        count = round(float(ratio) * positions.numel())
        if count == 0:
            return 0.0
        with torch.no_grad():
            magnitude = self.free[name].detach().reshape(-1)[positions].abs().float()
            order = torch.sort(magnitude, stable=True).indices
            keep = claim.clone().reshape(-1)
            keep[positions[order[:count]]] = False
            keep = keep.view_as(claim)
            self.claims[name] = keep
            self.free[name].masked_fill_(~keep & claim, 0)
        return count / positions.numel()

    def finalize(self, name: str) -> None:
        """Pack task ``name``: its kept weights become ``packed`` entries it owns; drop ``free``."""
        if name not in self.free:
            return
        with torch.no_grad():
            claim = self.claims[name]
            self.packed.copy_(
                torch.where(claim, self.free[name].to(self.packed.dtype), self.packed)
            )
            self.owner.masked_fill_(claim, self.task_index[name])
        for store in (self.free, self.claims, self.earlier):
            del store[name]
        if name == self.active_adapter:
            self._active_trainable = False
        self._drop_merged()
        if not self.training and self._has_active:
            self.refresh_merged()

    # -- artifact ---------------------------------------------------------------------------
    def export_adapter(self, name: str) -> dict[str, Tensor]:
        """The whole packed network of this layer (every task's weights, stored once).

        ``{"packed": weights, "owner": owner index bit-packed at ceil(log2(T+1)) bits}``; a task
        still training is included as if it were packed now.
        """
        packed, owner = self.packed, self.owner.to(torch.int64)
        for training, free in self.free.items():
            claim = self.claims[training]
            packed = torch.where(claim, free.detach().to(packed.dtype), packed)
            owner = owner.masked_fill(claim, self.task_index[training])
        top = max(self.next_index() - 1, int(owner.max()) if owner.numel() else 0)
        return {"packed": packed.detach(), "owner": pack_uints(owner, bits_for_values(top + 1))}

    @classmethod
    def encoding_for(cls, config: PackNetConfig) -> str:
        """``"packnet-owner"``: packed weights plus a bit-packed owner index."""
        return cls.encoding

    @staticmethod
    def _owner_bits(config: PackNetConfig) -> int:
        if not isinstance(config.task_index, int) or config.task_index < 1:
            raise ArtifactError("a PackNet artifact's config must record its task_index")
        return bits_for_values(config.task_index + 1)

    @classmethod
    def expected_tensors(
        cls, shape: tuple[int, ...], config: PackNetConfig
    ) -> dict[str, tuple[torch.dtype | None, tuple[int, ...]]]:
        """``packed`` (any float dtype, the weight's shape) and the packed ``owner`` bytes.

        ``config`` is the newest task's: its ``task_index`` is the number of slots ``T``.
        """
        numel = math.prod(shape)
        return {
            "packed": (None, tuple(shape)),
            "owner": (torch.uint8, (packed_size(numel * cls._owner_bits(config)),)),
        }

    @classmethod
    def check_import(
        cls, shape: tuple[int, ...], tensors: dict[str, Tensor], config: PackNetConfig
    ) -> None:
        """Refuse tensors that do not fit, owners above ``T``, or weights owned by nobody."""
        expected = cls.expected_tensors(shape, config)
        cls._require(
            set(tensors) == set(expected),
            f"expected tensors {sorted(expected)}, got {sorted(tensors)}",
        )
        packed, raw = tensors["packed"], tensors["owner"]
        cls._require(
            packed.is_floating_point() and tuple(packed.shape) == tuple(shape),
            f"tensor 'packed' must be floating point of shape {list(shape)}",
        )
        cls._require(
            raw.dtype == torch.uint8 and tuple(raw.shape) == expected["owner"][1],
            f"tensor 'owner' must be uint8 of shape {list(expected['owner'][1])}",
        )
        bits, numel = cls._owner_bits(config), math.prod(shape)
        cls._require(padding_bits_clear(raw, numel * bits), "tensor 'owner' has padding bits set")
        owner = unpack_uints(raw, numel, bits)
        cls._require(
            (int(owner.max()) if owner.numel() else 0) <= config.task_index,
            f"the owner index names tasks above {config.task_index}",
        )
        cls._require(
            bool((packed.reshape(-1)[owner == 0] == 0).all()),
            "'packed' holds nonzero weights that no task owns",
        )

    def import_adapter(
        self, name: str, tensors: dict[str, Tensor], config: PackNetConfig, trainable: bool
    ) -> None:
        """Register packed task ``name``; the first task imported installs the shared tensors.

        The wrapper imports the artifact's newest task first, whose ``task_index`` says how many
        bits each owner entry takes.

        PackNet tasks are final once packed, so ``trainable`` is ignored (add a new task to keep
        learning).
        """
        if not self.task_index:
            weight = self.base_layer.weight
            shape, numel = weight.shape, weight.numel()
            bits = self._owner_bits(config)
            self.packed = tensors["packed"].to(device=weight.device, dtype=weight.dtype).clone()
            owner = unpack_uints(tensors["owner"], numel, bits).view(shape)
            self.owner = owner.to(device=weight.device, dtype=torch.uint8)
            self.free.clear()
            for store in (self.claims, self.earlier):
                for key in list(store):
                    del store[key]
        self.task_index[name] = int(config.task_index)
