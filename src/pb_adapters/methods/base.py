"""The method-agnostic masked layer: what every method's layer class builds on.

An :class:`AdapterLayer` replaces one targeted ``Conv`` or ``Linear`` module of the base model. It
keeps the original module as ``base_layer`` (frozen, never written), holds any number of
adapters' state, and computes the active adapter's effective weight. Subclasses (one per method)
only say how an adapter's state turns into a weight and into artifact tensors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArtifactError, TargetingError

__all__ = [
    "SUPPORTED_LAYER_TYPES",
    "AdapterLayer",
    "BufferDict",
    "ScoredMaskLayer",
    "WeightWriter",
    "flat_views",
    "is_supported_layer",
    "staging_dtype",
]

#: Writes one adapter's inference weights of many layers at once: ``writer(targets, joined)``
#: fills ``targets`` (one flat, contiguous tensor per layer, of the layer's weight numel);
#: ``joined`` is ``None`` or one contiguous tensor whose consecutive slices are exactly
#: ``targets``, in order (a writer may then fill it in one operation).
WeightWriter = Callable[[Sequence[Tensor], Tensor | None], None]

#: Module types a mask can be put on. Subclasses (timm's ``Conv2dSame``, ``StdConv2d``,
#: ``Linear``...) are supported through the same path.
SUPPORTED_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_supported_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer type that can carry a mask."""
    return isinstance(module, SUPPORTED_LAYER_TYPES)


# -- calling the wrapped layer with another weight -------------------------------------------
def _linear_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    return F.linear(x, weight, layer.bias)


def _conv_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    return layer._conv_forward(x, weight, layer.bias)


def _generic_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    # Subclasses with their own forward (timm's Conv2dSame pads dynamically, StdConv2d
    # standardises its weight): run *their* forward with the weight swapped in.
    return torch.func.functional_call(layer, {"weight": weight}, (x,))


def _is_timm_conv2d_same(layer: nn.Module) -> bool:
    cls = type(layer)
    return cls.__name__ == "Conv2dSame" and cls.__module__ == "timm.layers.conv2d_same"


def _select_forward(
    layer: nn.Module,
) -> tuple[Callable[[nn.Module, Tensor, Tensor], Tensor], str]:
    """How to call ``layer`` with another weight, and the kind of call (see ``forward_kind``)."""
    cls = type(layer)
    if _is_timm_conv2d_same(layer):
        # timm's Conv2dSame (TensorFlow "SAME" padding, in the tf_* EfficientNets): call its
        # functional form directly, saving functional_call's overhead on every forward.
        conv2d_same = importlib.import_module("timm.layers.conv2d_same").conv2d_same

        def _conv2d_same_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
            return conv2d_same(
                x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )

        return _conv2d_same_forward, "conv_same"
    if isinstance(layer, nn.Linear) and cls.forward is nn.Linear.forward:
        return _linear_forward, "linear"
    for conv_cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(layer, conv_cls) and cls.forward is conv_cls.forward:
            return _conv_forward, "conv"
    return _generic_forward, "generic"


def flat_views(tensors: Sequence[Tensor], shared: dict[Any, Any]) -> list[Tensor] | None:
    """1-D views of ``tensors`` if all are contiguous and share one dtype and device, else None.

    What a batched :data:`WeightWriter` needs to treat many layers' weights as one list. Kept
    in ``shared`` (a writer's scratch dict), so every adapter of the same layers reuses them.
    """
    key = ("flat", tuple((id(t), t.data_ptr()) for t in tensors))
    if key in shared:
        return shared[key]
    views: list[Tensor] | None = []
    first = tensors[0] if tensors else None
    if first is not None and any(
        not t.is_contiguous() or t.dtype != first.dtype or t.device != first.device for t in tensors
    ):
        views = None
    else:
        views = [t.detach().view(-1) for t in tensors]
    shared[key] = views
    return views


def staging_dtype(device: torch.device, dtype: torch.dtype, small: torch.dtype) -> torch.dtype:
    """The dtype a batched writer stages its expanded mask in before copying it to the weights.

    On CPU, ``small`` (a byte per entry) moves fewer bytes; on accelerators the copy must keep
    the weights' ``dtype`` to stay one fused multi-tensor kernel.
    """
    return small if device.type == "cpu" else dtype


class BufferDict(nn.Module):
    """A dict of buffers that follows ``.to()``, ``.cuda()`` and ``state_dict`` like parameters do."""

    def __setitem__(self, key: str, value: Tensor) -> None:
        AdapterLayer.state_epoch += 1
        self.register_buffer(key, value)

    def __getitem__(self, key: str) -> Tensor:
        return self._buffers[key]  # type: ignore[return-value]

    def __delitem__(self, key: str) -> None:
        AdapterLayer.state_epoch += 1
        del self._buffers[key]

    def __contains__(self, key: object) -> bool:
        return key in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffers)

    def keys(self) -> list[str]:  # type: ignore[override]
        """The keys, in insertion order."""
        return list(self._buffers)


class AdapterLayer(nn.Module):
    """A targeted layer wrapped so that each adapter can change its weight.

    The wrapped module stays available as ``base_layer``; ``weight`` and ``bias`` (and every other
    attribute such as ``in_channels`` or ``out_features``) still read through to it, so code that
    inspects the layer (transformers reads ``projection.weight.dtype``) keeps working.

    In training mode (or whenever gradients flow to a trainable adapter) the effective weight is
    recomputed every forward so gradients reach the adapter's parameters. In eval mode it is
    computed once and reused until the adapter's state, the base weight or the device changes.
    """

    #: How the adapter's state is encoded in artifacts, recorded per module.
    encoding: str = ""
    #: Keys of :meth:`export_adapter`'s tensors that are packed bit planes (1-D ``uint8``, as
    #: :func:`~pb_adapters.utils.bits.pack_bits` writes them). The artifact writer
    #: entropy-codes these where that is smaller, and the reader hands them back packed, so a
    #: method never sees the coding.
    bit_plane_keys: ClassVar[tuple[str, ...]] = ()

    #: Whether the adapters on one layer share state (one packed network for several tasks).
    #: The wrapper then saves all of them, in :attr:`adapter_names` order, as one artifact:
    #: :meth:`export_adapter` returns the shared state once, and every task is imported from the
    #: same tensors.
    shared_state: bool = False

    #: How many adapter layers were ever created: a serving cache compares it to notice, at
    #: no cost per switch, that a model may hold new layers.
    instances_created: ClassVar[int] = 0
    #: Bumped whenever a layer's tensor attributes or :class:`BufferDict` entries are replaced
    #: (adapters added, imported, deleted, packed): a serving cache re-checks the state its
    #: materialised weights came from only after it moved. In-place writes bump the tensors'
    #: own version counters instead, which the cache checks at every switch.
    state_epoch: ClassVar[int] = 0

    def __init__(self, base_layer: nn.Module) -> None:
        if not is_supported_layer(base_layer):
            raise TargetingError(
                f"cannot mask a {type(base_layer).__name__}; supported layer types are "
                + ", ".join(t.__name__ for t in SUPPORTED_LAYER_TYPES)
            )
        super().__init__()
        AdapterLayer.instances_created += 1
        self.base_layer = base_layer
        self.active_adapter: str | None = None
        self.disabled = False
        #: How the base layer is called with another weight: ``"linear"``, ``"conv"`` (the
        #: standard ``nn.ConvNd`` forward), ``"conv_same"`` (timm's dynamic "SAME" padding) or
        #: ``"generic"`` (the module's own forward through ``functional_call``).
        self.forward_kind: str
        self._forward_with, self.forward_kind = _select_forward(base_layer)
        # The active adapter's weight, materialised for inference (eval mode), so inference
        # costs what the base costs. Plain booleans (not the adapter name) drive forward's
        # branches so that a compiled model does not recompile when the task changes.
        self.register_buffer("merged_weight", None, persistent=False)
        self._merged_key: Any = None
        self._cache_merged = True
        self._has_active = False
        self._active_trainable = False
        # Set by a wrapper's serving cache (pb_adapters.serving): frozen adapters' weights are
        # then views of its shared bank. ``_route`` is set only during a mixed-task batch, which
        # it computes inside the layer (pb_adapters.batching).
        self._serving: Any = None
        self._route: Any = None
        for param in base_layer.parameters():
            param.requires_grad_(False)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Tensor) or name in self._buffers or name in self._parameters:
            AdapterLayer.state_epoch += 1
        super().__setattr__(name, value)

    # -- read-through attributes ------------------------------------------------------------
    @property
    def weight(self) -> Tensor:
        """The base layer's (frozen, unmasked) weight."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        """The base layer's (frozen) bias."""
        return self.base_layer.bias

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    # -- what a method implements -----------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        """Adapters this layer holds state for."""
        raise NotImplementedError

    def add_adapter(self, name: str, config: Any) -> None:
        """Create fresh, trainable state for adapter ``name`` (the start state of training)."""
        raise NotImplementedError

    def delete_adapter(self, name: str) -> None:
        """Drop every tensor of adapter ``name``."""
        raise NotImplementedError

    def is_trainable(self, name: str) -> bool:
        """Whether adapter ``name`` holds trainable parameters on this layer."""
        raise NotImplementedError

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters an optimiser should update to train adapter ``name``."""
        raise NotImplementedError

    def state_tensors(self, name: str) -> list[Tensor]:
        """Every tensor the effective weight of ``name`` depends on (used to key the eval cache)."""
        raise NotImplementedError

    def effective_weight(self, name: str) -> Tensor:
        """The weight the layer computes with when adapter ``name`` is active."""
        raise NotImplementedError

    def inference_weight(self, name: str) -> Tensor:
        """The weight used in eval mode and by ``merge_and_unload`` (default: :meth:`effective_weight`).

        A method whose training forward is a relaxation (KSM's soft binary part) returns the
        hardened weight here, which is also what its artifact stores.
        """
        return self.effective_weight(name)

    @classmethod
    def inference_writer(
        cls, layers: Sequence[AdapterLayer], name: str, shared: dict[Any, Any]
    ) -> WeightWriter:
        """A :data:`WeightWriter` of adapter ``name``'s :meth:`inference_weight` on ``layers``.

        Used by the serving cache, which calls it again whenever the state it read changed.
        Building it may run per-layer tensor operations (views, say); running it should
        dispatch a number of operations that does not grow with ``len(layers)``: a switch of
        task then costs a few kernel launches, not a few per layer. ``shared`` is a scratch dict
        for tensors that depend on the layers only (kept by the caller, shared by all adapters).

        This default writes layer by layer (a few operations per layer); methods override it.
        """

        def write(targets: Sequence[Tensor], joined: Tensor | None) -> None:
            with torch.no_grad():
                for layer, target in zip(layers, targets, strict=True):
                    target.copy_(layer.inference_weight(name).reshape(-1))

        return write

    @classmethod
    def batchable(
        cls,
        layers: Sequence[AdapterLayer],
        name: str,
        shared: dict[Any, Any],
        source: Callable[[Any], Tensor],
        setting: Callable[[Any], Any],
    ) -> tuple[Any, list[Tensor]] | None:
        """``(setting, flat sources)`` where a batched writer applies to ``layers``: all of this
        class, ``name`` frozen on each, one value of ``setting(layer)`` and contiguous
        ``source(layer)`` tensors of one dtype and device (:func:`flat_views`); else ``None``.
        """
        if not all(isinstance(layer, cls) and not layer.is_trainable(name) for layer in layers):
            return None
        settings = {setting(layer) for layer in layers}
        sources = flat_views([source(layer) for layer in layers], shared)
        if len(settings) != 1 or sources is None:
            return None
        return settings.pop(), sources

    def float32_parameters(self) -> list[nn.Parameter]:
        """Parameters that stay float32 when the model is cast to half precision (default: none)."""
        return []

    def mask_counts(self, name: str) -> tuple[int, int]:
        """``(zeros, entries)`` of adapter ``name``'s mask on this layer."""
        raise NotImplementedError

    def export_adapter(self, name: str) -> dict[str, Tensor]:
        """The tensors stored in an artifact for adapter ``name`` (compact encodings)."""
        raise NotImplementedError

    @classmethod
    def encoding_for(cls, config: Any) -> str:
        """The encoding name recorded in artifacts for adapters made with ``config``."""
        raise NotImplementedError

    @classmethod
    def expected_tensors(
        cls, shape: tuple[int, ...], config: Any
    ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """``{key: (dtype, shape)}`` of the artifact tensors for a base weight of ``shape``."""
        raise NotImplementedError

    @classmethod
    def check_import(cls, shape: tuple[int, ...], tensors: dict[str, Tensor], config: Any) -> None:
        """Raise :class:`ArtifactError` if ``tensors`` cannot be imported for a weight of ``shape``.

        Called on every layer before any layer is changed, so it must not touch any state.
        """
        raise NotImplementedError

    def import_adapter(
        self, name: str, tensors: dict[str, Tensor], config: Any, trainable: bool
    ) -> None:
        """Install adapter ``name`` from artifact tensors already accepted by :meth:`check_import`."""
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------
    def set_adapter(self, name: str | None) -> None:
        """Compute with adapter ``name`` (``None``: the plain base layer).

        In eval mode the adapter's weight is materialised here, once, rather than at every
        forward.
        """
        if name is not None and name not in self.adapter_names:
            raise KeyError(name)
        self.active_adapter = name
        self._has_active = name is not None
        self._active_trainable = name is not None and self.is_trainable(name)
        if not self.training:
            self.refresh_merged()

    def set_trainable(self, name: str, trainable: bool) -> None:
        """Switch ``requires_grad`` of adapter ``name``'s parameters."""
        for param in self.trainable_parameters(name):
            param.requires_grad_(trainable)
        if name == self.active_adapter:
            self._active_trainable = self.is_trainable(name)

    def _cache_key(self, name: str) -> tuple[Any, ...]:
        weight = self.base_layer.weight
        parts: list[Any] = [name, weight.data_ptr(), weight._version, weight.dtype, weight.device]
        for tensor in self.state_tensors(name):
            parts.extend((tensor.data_ptr(), tensor._version))
        return tuple(parts)

    def refresh_merged(self) -> None:
        """(Re)compute ``merged_weight`` if the active adapter's state or the base changed."""
        name = self.active_adapter
        if name is None or self.disabled or not self._cache_merged:
            return
        serving = self._serving
        if serving is not None and not self._active_trainable and serving.refresh_layer(self):
            return  # a view of the serving cache's bank, materialised for all layers at once
        key = self._cache_key(name)
        if key != self._merged_key:
            with torch.no_grad():
                self.merged_weight = self.inference_weight(name)
            self._merged_key = key

    def serve(self, name: str | None, weight: Tensor | None, key: object) -> None:
        """Compute with frozen adapter ``name`` and its materialised ``weight`` (``None``: the
        plain base), as the serving cache does for all layers of a model at once.

        ``key`` marks the weight as the cache's; :meth:`refresh_merged` asks the cache again
        once it no longer matches. Plain attribute writes: this runs for every layer at every
        switch.
        """
        self.__dict__.update(
            active_adapter=name,
            _has_active=name is not None,
            _active_trainable=False,
            _merged_key=key,
        )
        self._buffers["merged_weight"] = weight

    def _drop_merged(self) -> None:
        self.merged_weight = None
        self._merged_key = None

    def set_merged_cache(self, enabled: bool) -> None:
        """Whether eval mode keeps the active adapter's weight between forwards (the default).

        Off, every forward computes the weight afresh: slower, but no weight-sized buffer stays
        behind (sharded training, where that buffer would be a full copy on every process).
        """
        self._cache_merged = bool(enabled)
        if enabled:
            if not self.training:
                self.refresh_merged()
        else:
            self._drop_merged()

    def train(self, mode: bool = True) -> AdapterLayer:
        """Training recomputes the weight every step; eval materialises it once."""
        super().train(mode)
        if mode:
            self._drop_merged()  # free the memory while training
            if self._serving is not None:
                self._serving.clear()
        else:
            self.refresh_merged()
        return self

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Run the base layer with the active adapter's effective weight."""
        if self._route is not None:  # a mixed-task batch: every sample with its task's weight
            return self._route.layer_forward(self, x, *args, **kwargs)
        if self.disabled or not self._has_active:
            return self.base_layer(x, *args, **kwargs)
        if self.training or (self._active_trainable and torch.is_grad_enabled()):
            # Differentiable path: gradients reach the adapter's parameters.
            return self._forward_with(
                self.base_layer, x, self.effective_weight(self.active_adapter)
            )
        if not self._cache_merged:
            return self._forward_with(
                self._modules["base_layer"], x, self.inference_weight(self.active_adapter)
            )
        merged = self._buffers["merged_weight"]  # direct: this runs on every forward
        if merged is None or (self._active_trainable and not torch.compiler.is_compiling()):
            # Trainable scores can change in eval mode (an optimiser step while the model is in
            # eval): re-check them. Frozen adapters only change through set_adapter / load.
            self.refresh_merged()
            merged = self._buffers["merged_weight"]
        return self._forward_with(self._modules["base_layer"], x, merged)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> AdapterLayer:
        # Mask parameters stay float32 when the model is cast to half precision: Adam's small
        # steps on them would vanish in bfloat16. Devices still follow the model.
        saved = {id(param): param.data for param in self.float32_parameters()}
        super()._apply(fn, recurse)
        for param in self.float32_parameters():
            if param.dtype != torch.float32:
                param.data = saved[id(param)].to(device=param.device, dtype=torch.float32)
        self._merged_key = None  # moved or cast: recompute from the converted base weight
        if self._serving is not None:
            # The bank stays behind: drop it, and materialise again on the next forward (the
            # other layers may not have moved yet).
            self._serving.clear()
            self._buffers["merged_weight"] = None
        elif not self.training and self._has_active:
            self.refresh_merged()
        return self

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}, active={self.active_adapter!r}"

    @classmethod
    def _check_layout(
        cls, tensors: dict[str, Tensor], expected: dict[str, tuple[torch.dtype, tuple[int, ...]]]
    ) -> None:
        """Raise :class:`ArtifactError` unless ``tensors`` has exactly the ``expected`` keys,
        dtypes and shapes (what :meth:`check_import` checks first)."""
        cls._require(
            set(tensors) == set(expected),
            f"expected tensors {sorted(expected)}, got {sorted(tensors)}",
        )
        for key, (dtype, size) in expected.items():
            tensor = tensors[key]
            cls._require(
                tensor.dtype == dtype and tuple(tensor.shape) == size,
                f"tensor {key!r} must be {dtype} of shape {list(size)}, got {tensor.dtype} "
                f"{list(tensor.shape)}",
            )

    @staticmethod
    def _require(condition: bool, message: str) -> None:
        """Raise :class:`ArtifactError` with ``message`` unless ``condition`` holds."""
        if not condition:
            raise ArtifactError(message)


class ScoredMaskLayer(AdapterLayer):
    """An adapter layer whose trainable state is real-valued mask scores (float32), and whose
    frozen state is packed buffers: the bookkeeping piggyback and KSM share.

    A trainable adapter lives in ``mask_scores[name]``; a loaded, frozen one in the buffer dicts
    named by ``packed_stores``. ``adapter_settings[name]`` holds the method's per-adapter
    settings and names the adapters the layer holds.
    """

    #: Attribute names of the :class:`BufferDict` s holding frozen adapters' packed state.
    packed_stores: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.mask_scores = nn.ParameterDict()
        for store in self.packed_stores:
            setattr(self, store, BufferDict())
        self.adapter_settings: dict[str, tuple[Any, ...]] = {}

    @property
    def adapter_names(self) -> list[str]:
        """Adapters this layer holds a mask for."""
        return list(self.adapter_settings)

    def delete_adapter(self, name: str) -> None:
        """Drop adapter ``name``'s scores or packed state."""
        for store in (self.mask_scores, *(getattr(self, s) for s in self.packed_stores)):
            if name in store:
                del store[name]
        self.adapter_settings.pop(name, None)
        if self.active_adapter == name:
            self.set_adapter(None)

    def is_trainable(self, name: str) -> bool:
        """True while adapter ``name`` holds real-valued scores rather than packed state."""
        return name in self.mask_scores

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        """The scores of adapter ``name`` (empty for a frozen, packed adapter)."""
        return [self.mask_scores[name]] if name in self.mask_scores else []

    @classmethod
    def batchable_on_base(
        cls, layers: Sequence[AdapterLayer], name: str, shared: dict[Any, Any], setting: int
    ) -> tuple[Any, list[Tensor]] | None:
        """:meth:`batchable` with the base weights as sources and ``adapter_settings[name]
        [setting]`` as the setting all layers must share."""
        return cls.batchable(
            layers,
            name,
            shared,
            lambda layer: layer.base_layer.weight,
            lambda layer: layer.adapter_settings[name][setting],
        )

    def float32_parameters(self) -> list[nn.Parameter]:
        """Every adapter's scores: they stay float32 under half-precision casts."""
        return list(self.mask_scores.values())
