"""Serving many tasks on one frozen base: materialised weights in a byte-budgeted, shared bank.

A frozen adapter stays packed (1 bit per masked weight, 2 when ternary; PackNet's shared owner
index). To compute with it in eval mode its weights are materialised into a *slot* of the bank
by its method's batched writer (:meth:`~pb_adapters.methods.base.AdapterLayer.inference_writer`):
a few tensor operations for the whole model, whatever the number of layers. The layers then
compute with views of that slot. Switching to a task whose slot is still held re-points the
layers and dispatches no tensor operation at all; tasks are evicted least recently used first
once the bank holds as many as the byte budget allows (by default one: the active task).

The bank is one buffer laid out layer by layer: layer ``l`` owns a ``[slots, numel_l]`` block, so
the first ``k`` slots of a layer are one contiguous ``[k, *weight_shape]`` tensor, which is what
a mixed-task batch computes with (:mod:`pb_adapters.batching`). With a single slot a task's
weights are one contiguous buffer, which a writer may fill in one operation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .methods.base import AdapterLayer, flat_views

__all__ = ["ServingCache"]

_EMPTY = object()  # an unused slot (``None`` names the plain base in mixed batches)
_MEMO_SIZE = 32
#: The values of :attr:`ServingCache.mixed_mode`.
MIXED_MODES = ("auto", "fused", "per_task")


class _Key:
    """Marks a layer's ``merged_weight`` as a view of the bank, valid while its slot is."""

    __slots__ = ()


def _adapter_layers(model: nn.Module) -> list[AdapterLayer]:
    return [module for module in model.modules() if isinstance(module, AdapterLayer)]


class _Plan:
    """How to materialise one task (``None``: the plain base) on the bank's layers, and what
    its weights depend on, to notice when they change."""

    def __init__(self, layers: Sequence[AdapterLayer], name: str | None, shared: dict) -> None:
        self.name = name
        self.covered = [name is not None and name in layer.adapter_names for layer in layers]
        self.covered_index = [i for i, c in enumerate(self.covered) if c]
        self.plain_index = [i for i, c in enumerate(self.covered) if not c]
        masked = [layers[i] for i in self.covered_index]
        self.trainable = any(layer.is_trainable(name) for layer in masked)  # type: ignore[arg-type]
        self.writer = (
            type(masked[0]).inference_writer(masked, name, shared) if masked else None  # type: ignore[arg-type]
        )
        plain = [layers[i].base_layer.weight for i in self.plain_index]
        self.plain_views = flat_views(plain, shared) or [w.detach().reshape(-1) for w in plain]
        self.states = [(layer, tuple(layer.state_tensors(name))) for layer in masked]  # type: ignore[arg-type]
        watched = [layer.base_layer.weight for layer in layers]
        watched += [t for _, tensors in self.states for t in tensors]
        self.versions = [(t, t._version) for t in watched]
        self.pointers = [(t, t.data_ptr()) for t in watched]
        self.epoch = AdapterLayer.state_epoch

    def valid(self) -> bool:
        """Whether the base weights and the task's state are still those the plan read.

        Version counters (in-place writes) at every call; which tensors the layers hold only
        after some layer's state was replaced (``AdapterLayer.state_epoch`` moved).
        """
        for tensor, version in self.versions:
            if tensor._version != version:
                return False
        if self.epoch == AdapterLayer.state_epoch:
            return True
        if not self._same_tensors():
            return False
        self.epoch = AdapterLayer.state_epoch
        return True

    def _same_tensors(self) -> bool:
        for tensor, pointer in self.pointers:
            if tensor.data_ptr() != pointer:
                return False
        name = self.name
        for layer, tensors in self.states:
            try:
                current = layer.state_tensors(name)  # type: ignore[arg-type]
            except KeyError:
                return False
            if len(current) != len(tensors):
                return False
            if any(a is not b for a, b in zip(current, tensors, strict=True)):
                return False
        return True

    def write(self, targets: Sequence[Tensor], joined: Tensor | None) -> None:
        """Materialise the task into ``targets`` (one flat view per bank layer)."""
        with torch.no_grad():
            if self.writer is not None:
                masked = [targets[i] for i in self.covered_index]
                self.writer(masked, None if self.plain_index else joined)
            if self.plain_index:  # layers the task does not mask compute with the base weight
                plain = [targets[i] for i in self.plain_index]
                torch._foreach_copy_(plain, self.plain_views)


class _Bank:
    """``slots`` tasks' materialised weights for ``layers``, in one layer-major buffer."""

    def __init__(self, layers: Sequence[AdapterLayer], slots: int) -> None:
        weights = [layer.base_layer.weight for layer in layers]
        self.shapes = [tuple(w.shape) for w in weights]
        self.kinds = [layer.forward_kind for layer in layers]
        numels = [w.numel() for w in weights]
        self.slots = slots
        self.storage = torch.empty(
            slots * sum(numels), dtype=weights[0].dtype, device=weights[0].device
        )
        self.blocks: list[Tensor] = []
        offset = 0
        for numel in numels:
            self.blocks.append(self.storage[offset : offset + slots * numel].view(slots, numel))
            offset += slots * numel
        self.flat = [[block[s] for block in self.blocks] for s in range(slots)]
        self.shaped = [
            [view.view(shape) for view, shape in zip(row, self.shapes, strict=True)]
            for row in self.flat
        ]
        self.joined = self.storage if slots == 1 else None
        self.task_bytes = sum(numels) * self.storage.element_size()
        self.tasks: list[Any] = [_EMPTY] * slots
        self.plans: list[_Plan | None] = [None] * slots
        self._grouped: dict[int, list[Tensor]] = {}

    def grouped(self, count: int) -> list[Tensor]:
        """Per layer, the first ``count`` slots shaped for one grouped call: ``[count * out,
        ...]`` for convolutions, ``[count, in, out]`` (transposed) for linear layers, else
        ``[count, *shape]``. Views, made once per ``count``."""
        views = self._grouped.get(count)
        if views is None:
            views = []
            for block, shape, kind in zip(self.blocks, self.shapes, self.kinds, strict=True):
                stack = block[:count].view(count, *shape)
                if kind == "linear":
                    views.append(stack.transpose(1, 2))
                elif kind in ("conv", "conv_same"):
                    views.append(stack.view(count * shape[0], *shape[1:]))
                else:
                    views.append(stack)
            self._grouped[count] = views
        return views


class ServingCache:
    """The materialised weights of a :class:`~pb_adapters.PiggybackModel`'s frozen tasks.

    Reach it as ``model.serving``. Set :attr:`budget_bytes` to keep more than the active task
    materialised (switching back to a held task then costs no tensor operation); ``None`` (the
    default) holds only the active task. The active task is always held, even when one task is
    larger than the budget. A mixed-task batch needs all of its tasks at once: with a smaller
    budget the bank grows for that call and shrinks back afterwards.

    :attr:`mixed_mode` says how a mixed-task batch runs: ``"fused"`` computes every task in one
    pass (one grouped convolution or batched matrix product per layer: few kernel launches, what
    an accelerator needs), ``"per_task"`` runs one pass per task over its samples (on a CPU,
    which is bound by arithmetic rather than launches, smaller batches of plain layers are
    faster); ``"auto"`` (the default) fuses everywhere but on the CPU.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._budget: int | None = None
        self._mixed_mode = "auto"
        self._layers: list[AdapterLayer] | None = None
        self._created = -1
        self.layer_index: dict[int, int] = {}
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._plans: dict[str | None, _Plan] = {}
        self._shared: dict[Any, Any] = {}
        self._bank: _Bank | None = None
        self._slot_of: dict[str | None, int] = {}
        self._lru: list[int] = []  # slots, least recently used first
        self._keys: dict[str | None, _Key] = {}
        self._memo: OrderedDict[Any, Any] = OrderedDict()
        #: ``writes``: tasks materialised; ``hits``: switches served from a held slot.
        self.counters = {"writes": 0, "hits": 0}

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) keeps the settings, never the cache.
        state = self.__dict__.copy()
        state.update(_layers=None, _created=-1, layer_index={}, _bank=None, _plans={})
        state.update(_shared={}, _slot_of={}, _lru=[], _keys={}, _memo=OrderedDict())
        return state

    # -- settings and reports ---------------------------------------------------------------
    @property
    def budget_bytes(self) -> int | None:
        """Bytes of materialised weights to keep (``None``: the active task only)."""
        return self._budget

    @budget_bytes.setter
    def budget_bytes(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"budget_bytes must be an int or None, got {value!r}")
        if value is not None and value < 0:
            raise ConfigError(f"budget_bytes must be >= 0, got {value}")
        self._budget = value
        if self._bank is not None and self._bank.slots > self._budget_slots(self._bank):
            self._resize(self._budget_slots(self._bank))

    @property
    def mixed_mode(self) -> str:
        """How mixed-task batches run: ``"auto"``, ``"fused"`` or ``"per_task"`` (see above)."""
        return self._mixed_mode

    @mixed_mode.setter
    def mixed_mode(self, value: str) -> None:
        if value not in MIXED_MODES:
            raise ConfigError(f"mixed_mode must be one of {MIXED_MODES}, got {value!r}")
        self._mixed_mode = value

    def fuses_mixed(self, device: torch.device) -> bool:
        """Whether a mixed-task batch on ``device`` runs as one fused pass."""
        if self._mixed_mode == "auto":
            return device.type != "cpu"
        return self._mixed_mode == "fused"

    @property
    def task_bytes(self) -> int:
        """Bytes one task's materialised weights take (0 before the first materialisation)."""
        return 0 if self._bank is None else self._bank.task_bytes

    @property
    def bank_bytes(self) -> int:
        """Bytes the bank holds now (slots times :attr:`task_bytes`)."""
        return 0 if self._bank is None else self._bank.slots * self._bank.task_bytes

    def held_tasks(self) -> list[str | None]:
        """Tasks whose materialised weights the bank holds, most recently used last."""
        if self._bank is None:
            return []
        return [self._bank.tasks[s] for s in self._lru if self._bank.tasks[s] is not _EMPTY]

    def materialised_bytes(self, name: str) -> int:
        """Bytes of ``name``'s materialised weights held, in the bank or by the layers (a
        task with trainable state is materialised layer by layer, outside the bank)."""
        held = self.task_bytes if name in self._slot_of else 0
        for layer in _adapter_layers(self._model):
            merged = layer._buffers.get("merged_weight")
            own = not isinstance(layer._merged_key, _Key)  # not a view of the bank
            if layer.active_adapter == name and merged is not None and own:
                held += merged.numel() * merged.element_size()
        return held

    # -- structure --------------------------------------------------------------------------
    def _ensure_layers(self) -> bool:
        if self._layers is None or AdapterLayer.instances_created != self._created:
            layers = _adapter_layers(self._model)
            self._created = AdapterLayer.instances_created
            if self._layers is None or [id(x) for x in layers] != [id(x) for x in self._layers]:
                self._reset_caches()
                self._layers = layers
                self.layer_index = {id(layer): i for i, layer in enumerate(layers)}
                for layer in layers:
                    layer._serving = self
        return bool(self._layers)

    @property
    def layers(self) -> list[AdapterLayer]:
        """The adapter layers the bank covers, in its order."""
        self._ensure_layers()
        return list(self._layers or [])

    def clear(self) -> None:
        """Drop every materialised weight and plan (the model moved, was cast or trains)."""
        if self._bank is not None or self._plans:
            self._reset_caches()

    # -- the bank ---------------------------------------------------------------------------
    def _budget_slots(self, bank: _Bank) -> int:
        if self._budget is None or bank.task_bytes == 0:
            return 1
        return max(1, self._budget // bank.task_bytes)

    def _ensure_bank(self, slots: int = 1) -> _Bank | None:
        """The bank, with at least ``slots`` slots (it starts with one and grows on demand, up
        to the budget, or beyond it for one mixed batch)."""
        assert self._layers is not None
        if self._bank is None:
            weights = [layer.base_layer.weight for layer in self._layers]
            first = weights[0]
            if any(w.dtype != first.dtype or w.device != first.device for w in weights):
                return None  # one buffer needs one dtype and device: layer by layer instead
            self._bank = _Bank(self._layers, slots)
            self._lru = []
        elif self._bank.slots < slots:
            self._resize(slots, reserve=False)  # the caller fills the new slots
        return self._bank

    def _resize(self, slots: int, reserve: bool = True) -> None:
        """A bank of ``slots`` slots keeping the most recently used tasks."""
        old = self._bank
        assert old is not None and self._layers is not None
        new = _Bank(self._layers, slots)
        kept = self._lru[-slots:]
        with torch.no_grad():
            for target, source in enumerate(kept):
                torch._foreach_copy_(new.flat[target], old.flat[source])
                new.tasks[target], new.plans[target] = old.tasks[source], old.plans[source]
        self._bank = new
        self._lru = list(range(len(kept)))
        self._slot_of = {new.tasks[s]: s for s in self._lru}
        self._keys.clear()  # every view changed
        if reserve:
            self._reserve_stale()

    def _touch(self, slot: int) -> None:
        if slot in self._lru:
            self._lru.remove(slot)
        self._lru.append(slot)

    def _evict(self, slot: int) -> None:
        bank = self._bank
        assert bank is not None
        name = bank.tasks[slot]
        if name is not _EMPTY:
            self._slot_of.pop(name, None)
            self._keys.pop(name, None)
        bank.tasks[slot], bank.plans[slot] = _EMPTY, None
        if slot in self._lru:
            self._lru.remove(slot)

    def _victim(self, keep: set[int]) -> int:
        """A slot to write a task into: an empty one, a new one while the budget allows (the
        bank doubles), else the least recently used."""
        bank = self._bank
        assert bank is not None
        for slot in range(bank.slots):
            if bank.tasks[slot] is _EMPTY and slot not in keep:
                return slot
        cap = self._budget_slots(bank)
        if bank.slots < cap:
            self._resize(min(cap, 2 * bank.slots))
            return self._victim(keep)
        return next(s for s in self._lru if s not in keep)

    def _plan(self, name: str | None) -> _Plan:
        plan = self._plans.get(name)
        if plan is None or not plan.valid():
            assert self._layers is not None
            plan = _Plan(self._layers, name, self._shared)
            self._plans[name] = plan
            slot = self._slot_of.get(name)
            if slot is not None:
                self._evict(slot)
        return plan

    def _materialise(self, name: str | None, plan: _Plan, keep: set[int]) -> int | None:
        bank = self._ensure_bank()
        if bank is None:
            return None
        slot = self._slot_of.get(name)
        if slot is not None and bank.plans[slot] is plan:
            self.counters["hits"] += 1
        else:
            slot = self._victim(keep)
            bank = self._bank  # the bank may have grown
            assert bank is not None
            self._evict(slot)
            plan.write(bank.flat[slot], bank.joined)
            bank.tasks[slot], bank.plans[slot] = name, plan
            self._slot_of[name] = slot
            self.counters["writes"] += 1
        self._touch(slot)
        return slot

    def _key(self, name: str | None) -> _Key:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = _Key()
        return key

    # -- switching --------------------------------------------------------------------------
    def _held(self, name: str | None) -> tuple[_Plan, int] | None:
        """``name``'s plan and slot, materialised if needed; None where the bank cannot serve
        it (a task with trainable state, layers of several dtypes or devices, or layers that
        recompute their weight every forward, as sharded training sets them)."""
        if not self._ensure_layers():
            return None
        if not all(layer._cache_merged for layer in self._layers or ()):
            return None
        plan = self._plan(name)
        if plan.trainable:
            return None
        slot = self._materialise(name, plan, set())
        return None if slot is None else (plan, slot)

    def activate(self, name: str) -> bool:
        """Make every layer compute with frozen task ``name`` (the layers it does not mask: with
        the plain base). False, and nothing changed, where the bank cannot serve it."""
        held = self._held(name)
        if held is None:
            return False
        plan, slot = held
        key = self._key(name)
        assert self._layers is not None and self._bank is not None
        views = self._bank.shaped[slot]
        for layer, view, covered in zip(self._layers, views, plan.covered, strict=True):
            if covered:
                layer.serve(name, view, key)
            else:
                layer.serve(None, None, key)
        return True

    def refresh_layer(self, layer: AdapterLayer) -> bool:
        """Give ``layer`` (and every layer with the same active adapter) its bank view; False
        where the bank cannot serve it."""
        name = layer.active_adapter
        key = self._keys.get(name)
        held = layer._buffers.get("merged_weight") is not None
        if key is not None and layer._merged_key is key and held:
            return True
        if not self._ensure_layers() or id(layer) not in self.layer_index:
            return False
        held = self._held(name)
        if held is not None:
            self._serve_active(name, held[1], held[0])
        return held is not None

    def _serve_active(self, name: str | None, slot: int, plan: _Plan) -> None:
        """Point the layers whose active adapter is ``name`` at slot ``slot``."""
        assert self._layers is not None and self._bank is not None
        key = self._key(name)
        views = self._bank.shaped[slot]
        for layer, view, covered in zip(self._layers, views, plan.covered, strict=True):
            if covered and layer.active_adapter == name and not layer._active_trainable:
                layer.serve(name, view, key)

    def _reserve_stale(self) -> None:
        """Re-point layers whose bank view was dropped (a slot reused or the bank resized)."""
        if self._layers is None:
            return
        stale = {
            layer.active_adapter
            for layer in self._layers
            if isinstance(layer._merged_key, _Key)
            and layer._merged_key is not self._keys.get(layer.active_adapter)
        }
        for name in stale - {None}:
            plan = self._plan(name)
            slot = self._materialise(name, plan, set())
            if slot is not None:
                self._serve_active(name, slot, plan)

    # -- mixed batches ----------------------------------------------------------------------
    def prepare_mixed(
        self, tasks: Sequence[str | None], allow_trainable: bool
    ) -> tuple[list[str | None], list[Tensor]] | None:
        """Hold ``tasks`` (``None``: the plain base) in the first ``len(tasks)`` slots.

        Returns the tasks in slot order and, per bank layer, their weights grouped for one call
        (:meth:`_Bank.grouped`); ``None`` where the bank cannot serve them. Call
        :meth:`finish_mixed` afterwards.
        """
        if not self._ensure_layers():
            return None
        plans = {name: self._plan(name) for name in tasks}
        if not allow_trainable and any(plan.trainable for plan in plans.values()):
            return None
        count = len(tasks)
        bank = self._ensure_bank(count)
        if bank is None:
            return None
        wanted = set(tasks)
        ready = {
            name
            for name in tasks
            if (slot := self._slot_of.get(name)) is not None
            and slot < count
            and bank.plans[slot] is plans[name]
        }
        free = [s for s in range(count) if bank.tasks[s] not in ready]
        with torch.no_grad():
            for name in tasks:
                if name in ready:
                    self.counters["hits"] += 1
                    continue
                target = free.pop()
                source = self._slot_of.get(name)
                self._evict(target)
                if source is not None and bank.plans[source] is plans[name]:
                    torch._foreach_copy_(bank.flat[target], bank.flat[source])
                    self._evict(source)
                else:
                    plans[name].write(bank.flat[target], bank.joined)
                    self.counters["writes"] += 1
                bank.tasks[target], bank.plans[target] = name, plans[name]
                self._slot_of[name] = target
        for slot in range(count):
            self._touch(slot)
        assert wanted == set(bank.tasks[:count])
        return list(bank.tasks[:count]), bank.grouped(count)

    def finish_mixed(self) -> None:
        """Shrink a bank grown for a mixed batch back to the budget; re-point the layers."""
        if self._bank is not None and self._bank.slots > self._budget_slots(self._bank):
            self._resize(self._budget_slots(self._bank))
        else:
            self._reserve_stale()

    def memo(self, key: Any, build: Callable[[], Any]) -> Any:
        """A small least-recently-used store for tensors built from a few modules (stacked
        heads, norms) that mixed batches reuse; ``key`` must say what they were built from."""
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = build()
            if len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return value
