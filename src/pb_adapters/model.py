"""``PiggybackModel``: the method-agnostic wrapper that owns adapters, heads and artifacts.

The wrapper injects one method's layers into a timm or transformers model, keeps every base
weight frozen and shared, and gives each task (adapter) its own masks, head and, optionally, norm
layers. Which method is used is decided by the adapter's config through the registry in
:mod:`pb_adapters.methods`; nothing here is specific to one method.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._version import __version__
from .bases import load_base_model
from .batching import mixed_batch_forward
from .card import write_model_card
from .config import AdapterConfig
from .errors import (
    AdapterNotFoundError,
    ArtifactError,
    BaseModelMismatchError,
    ConfigError,
    PbAdaptersError,
    TargetingError,
)
from .heads import LabelState, copy_head, create_task_head, get_label_state, set_label_state
from .hub import push_folder_to_hub, resolve_adapter_folder, validate_hub_target
from .mask_coding import DEFAULT_MASK_ENCODING, binary_entropy, encode_bit_planes
from .methods import get_method
from .methods.base import AdapterLayer, is_supported_layer
from .serialization import (
    fingerprint_tensors,
    iter_base_tensors,
    read_adapter_config,
    read_adapter_tensors,
    write_artifact,
)
from .serving import ServingCache
from .targeting import (
    find_head_paths,
    find_norm_paths,
    is_norm_layer,
    match_module_names,
    model_family,
    resolve_target_modules,
)
from .utils.names import normalize_base_name, validate_adapter_name

__all__ = ["BASE_ADAPTER_NAME", "AdapterInfo", "MaskStats", "PiggybackModel", "get_piggyback_model"]

#: The name that stands for "no adapter, the plain base" in ``adapter_names=``.
BASE_ADAPTER_NAME = "__base__"


def _key(path: str) -> str:
    # Module paths are dotted identifiers; '-' never occurs in one, so the escape is reversible.
    return path.replace(".", "-")


def _path(key: str) -> str:
    """Inverse of :func:`_key`."""
    return key.replace("-", ".")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _module_tensors(module: nn.Module) -> dict[str, Tensor]:
    """A task module's stored tensors: parameters and persistent buffers, no step counters."""
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


@dataclass
class MaskStats:
    """How much of the base each mask removes.

    Attributes:
        per_layer: Fraction of zeros in each masked layer's mask.
        total: Fraction of zeros over every masked weight.
        zeros: Number of masked-out entries.
        num_masked: Number of mask entries (masked weights, for per-weight methods).
        entropy_bits: Empirical order-0 entropy of the masks (zero versus nonzero), summed over
            layers: ``entries * H(zeros / entries)`` per layer. No lossless coder that treats
            each layer's entries as independent can store the masks in fewer bits.
    """

    per_layer: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    zeros: int = 0
    num_masked: int = 0
    entropy_bits: float = 0.0
    materialised_bytes: int = 0  # this adapter's materialised weights held now
    cache_bytes: int = 0  # the serving bank's bytes (every task held)
    cache_budget_bytes: int | None = None  # model.serving.budget_bytes (None: active task only)

    @property
    def entropy_bits_per_entry(self) -> float:
        """:attr:`entropy_bits` per mask entry."""
        return self.entropy_bits / max(self.num_masked, 1)

    def __str__(self) -> str:
        return (
            f"mask sparsity: {self.total:.2%} zeros ({self.zeros:,} of {self.num_masked:,} entries "
            f"in {len(self.per_layer)} layers), entropy {self.entropy_bits_per_entry:.3f} bits "
            "per entry"
        )


@dataclass
class AdapterInfo:
    """A loaded adapter, as :meth:`PiggybackModel.list_adapters` reports it."""

    name: str
    method: str
    num_labels: int | None
    id2label: dict[int, str]
    trainable: bool
    active: bool
    materialised_bytes: int = 0  # bytes of its materialised weights held (0: packed only)


@dataclass
class _TaskPlan:
    """One task of an artifact, ready to install."""

    name: str
    config: AdapterConfig
    record: dict[str, Any]  # the artifact's fields about this task (labels, head, metrics)
    prefix: str  # where its module tensors live in the weights file
    modules: dict[str, tuple[str, nn.Module]]  # path -> (kind, module ready to install)


@dataclass
class _LoadPlan:
    """Everything a load needs, checked against the model before anything is changed."""

    tasks: list[_TaskPlan]  # oldest first; one task unless the method shares layer state
    layer_tensors: dict[str, dict[str, Tensor]]


class PiggybackModel(nn.Module):
    """A frozen, shared base model plus any number of per-task adapters.

    Create one with :func:`get_piggyback_model` (to train a new task) or
    :meth:`PiggybackModel.from_pretrained` (to use a saved one). Calling the wrapper calls the
    base model, with the active adapter's masks, head and label metadata in place, and returns
    what the base returns (timm: logits; transformers: ``ImageClassifierOutput``).

    Attributes:
        base_model: The wrapped timm / transformers model (its targeted layers replaced by
            adapter layers that read through to the originals).
        peft_config: ``{adapter name: config}``.
        active_adapter: The adapter in use, or ``None`` for the plain base.
    """

    def __init__(self, model: nn.Module) -> None:
        if isinstance(model, PiggybackModel):
            raise TypeError("the model is already a PiggybackModel; use add_adapter on it")
        super().__init__()
        self.base_model = model
        self.peft_config: dict[str, AdapterConfig] = {}
        self.active_adapter: str | None = None
        # Per-task copies of whole modules (heads, norms, modules_to_save), swapped into the
        # base on set_adapter; the base's originals are kept to swap back.
        self.task_modules = nn.ModuleDict()
        self.base_modules = nn.ModuleDict()
        self._module_kinds: dict[str, dict[str, str]] = {}  # adapter -> module key -> kind
        self._labels: dict[str, LabelState] = {}
        self._frozen: set[str] = set()  # adapters loaded for inference only
        # adapter -> (metrics, datasets) recorded for it, written into artifacts that store it
        self._recorded: dict[str, tuple[dict[str, Any] | None, list[str] | None]] = {}
        self._base_labels = get_label_state(model)
        self._head_paths = find_head_paths(model)
        self._fingerprint_cache: tuple[tuple[Any, ...], str] | None = None
        self.serving = ServingCache(model)  # frozen tasks' materialised weights, budgeted
        for param in model.parameters():
            param.requires_grad_(False)
        self.train(model.training)  # a base in eval mode stays in eval mode

    # ------------------------------------------------------------------ passthrough
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Call the base model with the active adapter in place.

        Args:
            adapter_names: For a mixed-task batch in eval mode, the adapter of each sample
                (``BASE_ADAPTER_NAME`` for the plain base). Each sample gets exactly what its task
                gives; logits of tasks with fewer classes are padded with ``-inf``.
        """
        if adapter_names is None:
            return self.base_model(*args, **kwargs)
        return self._mixed_forward(list(adapter_names), args, kwargs)

    def _mixed_forward(
        self, names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.training:
            raise PbAdaptersError(
                "adapter_names= mixes tasks for inference only; call model.eval() first"
            )
        for name in dict.fromkeys(names):
            if name != BASE_ADAPTER_NAME:
                self._require_adapter(name)
        batch = next((v for v in (*args, *kwargs.values()) if isinstance(v, Tensor)), None)
        if batch is None or batch.dim() == 0 or batch.shape[0] != len(names):
            size = None if batch is None else tuple(batch.shape)
            raise PbAdaptersError(
                f"adapter_names has {len(names)} entries but the input batch is {size}"
            )

        def run_group(task: str | None, group_args: Any, group_kwargs: Any) -> Any:
            if task is None:
                with self.disable_adapter():
                    return self.base_model(*group_args, **group_kwargs)
            self.set_adapter(task)
            return self.base_model(*group_args, **group_kwargs)

        def modules_of(task: str | None) -> dict[str, nn.Module]:
            modules = dict(self.base_modules.items())
            modules.update(self.task_modules[task].items() if task is not None else ())
            return {_path(key): module for key, module in modules.items()}

        previous = self.active_adapter
        try:
            return mixed_batch_forward(
                self.serving,
                [None if name == BASE_ADAPTER_NAME else name for name in names],
                args,
                kwargs,
                run=self.base_model,
                run_group=run_group,
                modules_of=modules_of,
                get_module=self.base_model.get_submodule,
                set_module=lambda path, module: _set_submodule(self.base_model, path, module),
            )
        finally:
            if previous is not None and self.active_adapter != previous:
                self.set_adapter(previous)

    @property
    def family(self) -> str:
        """``"timm"``, ``"transformers"`` or ``"torch"``."""
        return model_family(self.base_model)

    @property
    def head_paths(self) -> list[str]:
        """Module paths of the classifier layer(s) each task replaces."""
        return list(self._head_paths)

    def adapter_layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        """``(path, layer)`` for every adapter layer in the base model."""
        for name, module in self.base_model.named_modules():
            if isinstance(module, AdapterLayer):
                yield name, module

    # ------------------------------------------------------------------ adapters
    def _require_adapter(self, name: str) -> None:
        if name not in self.peft_config:
            loaded = ", ".join(self.peft_config) or "none"
            raise AdapterNotFoundError(f"no adapter named {name!r} (loaded: {loaded})")

    def _method_of_model(self) -> str | None:
        return next((c.method for c in self.peft_config.values()), None)

    def _wrap_targets(
        self, targets: list[str], layer_class: type[AdapterLayer]
    ) -> dict[str, AdapterLayer]:
        layers: dict[str, AdapterLayer] = {}
        for path in targets:
            module = self.base_model.get_submodule(path)
            if not isinstance(module, AdapterLayer):
                module = layer_class(module)
                _set_submodule(self.base_model, path, module)
            layers[path] = module
        return layers

    def _check_method(self, config: AdapterConfig) -> None:
        current = self._method_of_model()
        if current is not None and current != config.method:
            raise ConfigError(
                f"this model holds {current!r} adapters; adding a {config.method!r} adapter to the same "
                "model is not supported, wrap a second copy of the base instead"
            )

    def _new_task_modules(self, config: AdapterConfig) -> dict[str, tuple[str, nn.Module]]:
        """Fresh head(s), and per-task norm / saved-module copies, for a new adapter."""
        with self._base_installed():
            modules: dict[str, tuple[str, nn.Module]] = {}
            if config.num_labels is not None and not self._head_paths:
                raise TargetingError(
                    f"cannot find the classifier head of {type(self.base_model).__name__} to give the task "
                    "its own; set pretrained_cfg['classifier'] (timm) or use a *ForImageClassification model"
                )
            for path in self._head_paths:
                if config.num_labels is not None:
                    head = create_task_head(self.base_model, path, config.num_labels)
                else:
                    head = copy_head(self.base_model, path)
                modules[path] = ("head", head)
            if config.train_norms:
                for path in find_norm_paths(self.base_model, skip=self._head_paths):
                    modules[path] = ("norm", copy.deepcopy(self.base_model.get_submodule(path)))
            if config.modules_to_save:
                names = [n for n, _ in self.base_model.named_modules() if n]
                for path in match_module_names(names, config.modules_to_save):
                    if path not in modules:
                        modules[path] = (
                            "module",
                            copy.deepcopy(self.base_model.get_submodule(path)),
                        )
        return modules

    def _register_task_modules(self, name: str, modules: dict[str, tuple[str, nn.Module]]) -> None:
        with self._base_installed():
            store = nn.ModuleDict()
            for path, (_, module) in modules.items():
                if _key(path) not in self.base_modules:
                    self.base_modules[_key(path)] = self.base_model.get_submodule(path)
                store[_key(path)] = module
            self.task_modules[name] = store.train(self.training)  # switches keep modes as they are
        self._module_kinds[name] = {_key(path): kind for path, (kind, _) in modules.items()}

    def _labels_for(self, config: AdapterConfig) -> LabelState:
        if config.num_labels is None:
            return copy.deepcopy(self._base_labels)
        id2label = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
        label2id = config.label2id or {v: k for k, v in id2label.items()}
        return LabelState(config.num_labels, dict(id2label), dict(label2id))

    def add_adapter(self, adapter_name: str, config: AdapterConfig) -> None:
        """Add a new, trainable adapter (masks at their start state, a fresh head).

        Like PEFT, this does not make the new adapter active; call :meth:`set_adapter`.
        """
        validate_adapter_name(adapter_name)
        if not isinstance(config, AdapterConfig):
            raise ConfigError(f"config must be an AdapterConfig, got {type(config).__name__}")
        if adapter_name in self.peft_config:
            raise ConfigError(
                f"an adapter named {adapter_name!r} is already loaded; delete_adapter it first"
            )
        self._check_method(config)
        spec = get_method(config.method)
        config = copy.deepcopy(config)
        self._fill_base_identity(config)
        targets = resolve_target_modules(
            self.base_model, config.target_modules, config.exclude_modules
        )
        task_modules = self._new_task_modules(config)
        for path, layer in self._wrap_targets(targets, spec.layer_class).items():
            if not isinstance(layer, spec.layer_class):
                raise ConfigError(f"module {path!r} already holds a {type(layer).__name__}")
            layer.add_adapter(adapter_name, config)
        self.peft_config[adapter_name] = config
        self._labels[adapter_name] = self._labels_for(config)
        self._register_task_modules(adapter_name, task_modules)
        for _, module in task_modules.values():
            module.requires_grad_(False)
        if self.active_adapter is None:
            self.set_adapter(adapter_name)
        else:
            self.set_adapter(self.active_adapter)

    def _fill_base_identity(self, config: AdapterConfig) -> None:
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = self._base_identity()["name_or_path"]
        if config.base_model_revision is None:
            config.base_model_revision = self._base_identity()["revision"]

    def _install(self, name: str | None) -> None:
        """Put adapter ``name``'s task modules (or the base's, for ``None``) into the base model."""
        own = dict(self.task_modules[name].items()) if name is not None else {}
        for key, base_module in self.base_modules.items():
            module = own.get(key, base_module)
            path = _path(key)
            if self.base_model.get_submodule(path) is not module:
                _set_submodule(self.base_model, path, module)

    @contextlib.contextmanager
    def _base_installed(self) -> Iterator[None]:
        previous = self.active_adapter
        self._install(None)
        try:
            yield
        finally:
            self._install(previous)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active task: its masks, head, norms and labels take effect.

        Only the active adapter's parameters are trainable.
        """
        self._require_adapter(adapter_name)
        # Eval mode: the serving cache points every layer at the task's materialised weights
        # in one pass (no tensor operation when they are held). Trainable tasks: layer by layer.
        if self.training or not self.serving.activate(adapter_name):
            for _, layer in self.adapter_layers():
                layer.set_adapter(adapter_name if adapter_name in layer.adapter_names else None)
        self._install(adapter_name)
        set_label_state(self.base_model, self._labels[adapter_name])
        frozen = {adapter_name, self.active_adapter} <= self._frozen
        self.active_adapter = adapter_name
        if not frozen:  # frozen tasks have nothing trainable to switch
            self._update_trainable()
        if self.training:  # the norm layers this task trains; eval mode is already uniform
            self.train(True)

    def _update_trainable(self) -> None:
        for _, layer in self.adapter_layers():
            for name in layer.adapter_names:
                layer.set_trainable(name, name == self.active_adapter)
        for name, store in self.task_modules.items():
            config = self.peft_config[name]
            kinds = self._module_kinds[name]
            for key, module in store.items():
                kind = kinds[key]
                trainable = (
                    name == self.active_adapter
                    and name not in self._frozen
                    and (kind != "head" or config.train_head)
                )
                module.requires_grad_(trainable)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and everything it holds; another loaded adapter becomes active."""
        self._require_adapter(adapter_name)
        for _, layer in self.adapter_layers():
            if adapter_name in layer.adapter_names:
                layer.delete_adapter(adapter_name)
        del self.task_modules[adapter_name]
        for store in (self.peft_config, self._module_kinds, self._labels, self._recorded):
            store.pop(adapter_name, None)
        self._frozen.discard(adapter_name)
        if self.active_adapter == adapter_name:
            self.active_adapter = None
            remaining = next(iter(self.peft_config), None)
            if remaining is not None:
                self.set_adapter(remaining)
            else:
                self._install(None)
                set_label_state(self.base_model, self._base_labels)
                for _, layer in self.adapter_layers():
                    layer.set_adapter(None)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[PiggybackModel]:
        """Within the block the model is the plain base model, with the base head."""
        previous = self.active_adapter
        layers = [layer for _, layer in self.adapter_layers()]
        for layer in layers:
            layer.disabled = True
        self._install(None)
        set_label_state(self.base_model, self._base_labels)
        try:
            yield self
        finally:
            for layer in layers:
                layer.disabled = False
            if previous is not None:
                self.set_adapter(previous)

    def list_adapters(self) -> list[AdapterInfo]:
        """Every loaded adapter with its method, classes and whether it trains."""
        return [
            AdapterInfo(
                name=name,
                method=config.method,
                num_labels=self._labels[name].num_labels,
                id2label=dict(self._labels[name].id2label or {}),
                trainable=name not in self._frozen,
                active=name == self.active_adapter,
                materialised_bytes=self.serving.materialised_bytes(name),
            )
            for name, config in self.peft_config.items()
        ]

    def merge_and_unload(
        self, adapter_name: str | None = None, *, inplace: bool = False
    ) -> nn.Module:
        """A plain model of the base's own class with the adapter's masks applied and its head.

        The result is a timm model or transformers ``PreTrainedModel`` like the base, usable with
        their own tooling (``save_pretrained``, ``timm`` checkpoints). With ``inplace=False``
        (the default) the result is an independent copy and the wrapper and its other adapters
        stay intact; ``inplace=True`` unwraps this model's base instead (no copy; the wrapper is
        not usable afterwards).
        """
        name = adapter_name or self.active_adapter
        if name is None:
            raise AdapterNotFoundError(
                "no adapter to merge: pass adapter_name or set_adapter first"
            )
        self._require_adapter(name)
        previous = self.active_adapter
        self.set_adapter(name)
        try:
            memo: dict[int, Any] = {}
            replacements: dict[str, nn.Module] = {}
            for path, layer in self.adapter_layers():
                base_layer = layer.base_layer
                inner: dict[int, Any] = {}
                if name in layer.adapter_names:
                    with torch.no_grad():
                        merged = layer.inference_weight(name).detach().clone()
                    inner[id(base_layer.weight)] = nn.Parameter(merged)
                if inner or not inplace:
                    base_layer = copy.deepcopy(base_layer, inner)
                memo[id(layer)] = base_layer
                replacements[path] = base_layer
            if inplace:
                model = self.base_model
                for path, plain in replacements.items():
                    _set_submodule(model, path, plain)
            else:
                model = copy.deepcopy(self.base_model, memo)  # adapter layers map to plain ones
        finally:
            if not inplace and previous is not None:
                self.set_adapter(previous)
        for param in model.parameters():
            param.requires_grad_(True)  # a plain model, as timm / transformers create it
        return model

    # ------------------------------------------------------------------ training helpers
    def train(self, mode: bool = True) -> PiggybackModel:
        """Set training mode; norm layers the active task does not train stay in eval mode.

        Frozen BatchNorm in eval mode keeps its running statistics untouched, as in the official
        piggyback code.
        """
        super().train(mode)
        if mode:
            trained = set()
            if self.active_adapter is not None:
                kinds = self._module_kinds[self.active_adapter]
                store = self.task_modules[self.active_adapter]
                trained = {id(m) for k, m in store.items() if kinds[k] in ("norm", "module")}
            for module in self.base_model.modules():
                if is_norm_layer(module) and id(module) not in trained:
                    module.eval()
        return self

    def parameter_groups(self, adapter_name: str | None = None) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters of an adapter, grouped for separate learning rates.

        Keys: the method's layer group (``"masks"`` for mask methods, ``"weights"`` for PackNet:
        its :attr:`~pb_adapters.registry.MethodSpec.layer_group`), ``"head"``, ``"norms"``, and
        ``"modules"`` (``modules_to_save``); empty groups are left out.
        """
        name = adapter_name or self.active_adapter
        if name is None:
            return {}
        self._require_adapter(name)
        layer_group = get_method(self.peft_config[name].method).layer_group
        groups: dict[str, list[nn.Parameter]] = {
            layer_group: [],
            "head": [],
            "norms": [],
            "modules": [],
        }
        for _, layer in self.adapter_layers():
            if name in layer.adapter_names:
                groups[layer_group].extend(
                    p for p in layer.trainable_parameters(name) if p.requires_grad
                )
        kind_to_group = {"head": "head", "norm": "norms", "module": "modules"}
        kinds = self._module_kinds[name]
        for key, module in self.task_modules[name].items():
            group = groups[kind_to_group[kinds[key]]]
            group.extend(p for p in module.parameters() if p.requires_grad)
        return {k: v for k, v in groups.items() if v}

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts; total counts the base once plus adapter state."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print trainable and total parameter counts, as PEFT does, plus the masked weights."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}"
        )
        if self.active_adapter is not None:
            stats = self.mask_stats()
            print(f"masked layers: {len(stats.per_layer)} || mask entries: {stats.num_masked:,}")

    def mask_stats(self, adapter_name: str | None = None) -> MaskStats:
        """Per-layer and total fraction of zeros in an adapter's masks (default: the active one).

        Also the masks' empirical order-0 entropy, the floor of what entropy coding can store.
        """
        name = adapter_name or self.active_adapter
        if name is None:
            raise AdapterNotFoundError("no adapter is active; pass adapter_name")
        self._require_adapter(name)
        stats = MaskStats()
        for path, layer in self.adapter_layers():
            if name in layer.adapter_names:
                zeros, entries = layer.mask_counts(name)
                stats.per_layer[path] = zeros / max(entries, 1)
                stats.zeros += zeros
                stats.num_masked += entries
                stats.entropy_bits += entries * binary_entropy(zeros / max(entries, 1))
        stats.total = stats.zeros / max(stats.num_masked, 1)
        stats.materialised_bytes = self.serving.materialised_bytes(name)
        stats.cache_bytes = self.serving.bank_bytes
        stats.cache_budget_bytes = self.serving.budget_bytes
        return stats

    # ------------------------------------------------------------------ base identity
    def _base_identity(self) -> dict[str, Any]:
        model = self.base_model
        family = model_family(model)
        name: str | None = None
        revision: str | None = None
        architecture: str | None = None
        if family == "timm":
            cfg = model.pretrained_cfg
            architecture = cfg.get("architecture")
            hub_id, _, hub_revision = (cfg.get("hf_hub_id") or "").partition("@")
            name = f"hf-hub:{hub_id}" if hub_id else architecture
            revision = hub_revision or None
        elif family == "transformers":
            name = getattr(model, "name_or_path", None) or model.config._name_or_path or None
            revision = getattr(model.config, "_commit_hash", None)
            architecture = type(model).__name__
        else:
            architecture = type(model).__name__
        with self._base_installed():
            num_parameters = sum(t.numel() for n, t in iter_base_tensors(model) if n)
        return {
            "name_or_path": name,
            "revision": revision,
            "library": family,
            "architecture": architecture,
            "num_parameters": num_parameters,
        }

    def base_fingerprint(self) -> str:
        """SHA-256 of every base weight and buffer (the head excluded) that adapters rely on."""
        with self._base_installed():
            items = list(iter_base_tensors(self.base_model, skip=self._head_paths))
        key = tuple((n, t.data_ptr(), t._version, t.dtype) for n, t in items)
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != key:
            self._fingerprint_cache = (key, fingerprint_tensors(items))
        return self._fingerprint_cache[1]

    # ------------------------------------------------------------------ saving
    def _artifact_group(self, name: str) -> list[str]:
        """The adapters one artifact of ``name`` stores: ``[name]``, or every adapter that shares
        layer state with it (in the layers' order) for methods with ``shared_state``."""
        spec = get_method(self.peft_config[name].method)
        if spec.layer_class.shared_state:
            for _, layer in self.adapter_layers():
                if name in layer.adapter_names:
                    return [n for n in layer.adapter_names if n in self.peft_config]
        return [name]

    def _task_record(
        self,
        name: str,
        prefix: str,
        metrics: dict[str, Any] | None,
        datasets: list[str] | None,
        tensors: dict[str, Tensor],
    ) -> dict[str, Any]:
        """What an artifact records about one task (its tensors go into ``tensors``)."""
        saved = []
        kinds = self._module_kinds[name]
        for key, module in self.task_modules[name].items():
            path = _path(key)
            module_tensors = _module_tensors(module)
            for tkey, tensor in module_tensors.items():
                tensors[f"{prefix}{path}.{tkey}"] = tensor
            saved.append(
                {
                    "path": path,
                    "kind": kinds[key],
                    "type": type(module).__name__,
                    "tensors": {k: list(v.shape) for k, v in module_tensors.items()},
                }
            )
        labels = self._labels[name]
        return {
            "config": self.peft_config[name].to_dict(),
            "head": {
                "paths": list(self._head_paths),
                "num_labels": labels.num_labels,
                "stored": True,
            },
            "id2label": {str(k): v for k, v in (labels.id2label or {}).items()} or None,
            "label2id": labels.label2id,
            "saved_modules": saved,
            "metrics": metrics,
            "datasets": datasets,
        }

    def _artifact(
        self, name: str, metrics: dict[str, Any] | None, datasets: list[str] | None
    ) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
        """The config dict, the tensors (bit planes packed) and the keys of the bit planes."""
        group = self._artifact_group(name)
        top = group[-1]  # the artifact's main fields describe the newest task of a group
        config = self.peft_config[top]
        spec = get_method(config.method)
        tensors: dict[str, Tensor] = {}
        planes: list[str] = []
        records: list[dict[str, Any]] = []
        for path, layer in self.adapter_layers():
            if top not in layer.adapter_names:
                continue
            for key, tensor in layer.export_adapter(top).items():
                tensors[f"layers.{path}.{key}"] = tensor
                if key in spec.layer_class.bit_plane_keys:
                    planes.append(f"layers.{path}.{key}")
            zeros, entries = layer.mask_counts(top)
            shape = list(layer.base_layer.weight.shape)
            records.append(
                {
                    "name": path,
                    "type": type(layer.base_layer).__name__,
                    "shape": shape,
                    "numel": math.prod(shape),
                    "encoding": spec.layer_class.encoding_for(config),
                    "zeros": zeros,
                    "entries": entries,  # mask entries: fewer than numel when entries are shared
                }
            )

        def task_metrics(task: str) -> tuple[dict[str, Any] | None, list[str] | None]:
            if task == name and (metrics is not None or datasets is not None):
                return metrics, datasets
            return self._recorded.get(task, (None, None))

        task = self._task_record(top, "modules.", *task_metrics(top), tensors)
        identity = self._base_identity()
        identity["name_or_path"] = config.base_model_name_or_path or identity["name_or_path"]
        identity["revision"] = config.base_model_revision or identity["revision"]
        identity["fingerprint"] = self.base_fingerprint()
        # The writer adds format_version: it depends on whether any plane gets entropy-coded.
        data: dict[str, Any] = {
            "library": "pb-adapters",
            "library_version": __version__,
            "method": config.method,
            "config": task.pop("config"),
            "base_model": identity,
            "modules": records,
            **task,
        }
        if spec.layer_class.shared_state:
            data["task_name"] = top
            data["tasks"] = [
                {"name": other}
                | self._task_record(other, f"tasks.{other}.", *task_metrics(other), tensors)
                for other in group[:-1]
            ]
        return data, tensors, planes

    def record_metrics(
        self,
        adapter_name: str,
        metrics: dict[str, Any] | None,
        datasets: list[str] | None = None,
    ) -> None:
        """Remember an adapter's evaluation results for the artifacts that store it.

        Artifacts holding several tasks (PackNet's packed network) write every task's recorded
        metrics; loading an artifact records the metrics it holds.
        """
        self._require_adapter(adapter_name)
        self._recorded[adapter_name] = (metrics, datasets)

    def save_pretrained(
        self,
        save_directory: str | Path,
        adapter_name: str | None = None,
        *,
        metrics: dict[str, Any] | None = None,
        datasets: list[str] | None = None,
        write_card: bool = True,
        repo_id: str | None = None,
        subfolder: str | None = None,
        mask_encoding: str = DEFAULT_MASK_ENCODING,
    ) -> Path:
        """Write one adapter (default: the active one) as an artifact folder.

        The folder gets ``adapter_config.json`` and ``adapter_model.safetensors`` (masks
        entropy-coded or bit-packed, head and per-task norm weights) and, unless
        ``write_card=False``, a model card (``README.md`` with a per-layer sparsity plot, and a
        small ``config.json``). ``metrics`` (e.g. ``{"accuracy": 0.98}``) and ``datasets`` are
        recorded for the card; ``repo_id``/``subfolder`` make the card's usage snippet point at
        the Hub. The artifact files are replaced atomically.

        ``mask_encoding="ans"`` (the default) entropy-codes each mask plane that gets smaller
        for it (artifact format version 2); ``"bitpack"`` stores 1 bit per entry (format
        version 1, which releases before entropy coding read as well).
        """
        name = adapter_name or self.active_adapter
        if name is None:
            raise AdapterNotFoundError("no adapter to save: add or load one first")
        self._require_adapter(name)
        data, tensors, planes = self._artifact(name, metrics, datasets)
        folder = write_artifact(
            save_directory, data, tensors, bit_planes=planes, mask_encoding=mask_encoding
        )
        if metrics is not None or datasets is not None:
            self._recorded[name] = (metrics, datasets)
        if write_card:
            write_model_card(folder, repo_id=repo_id, subfolder=subfolder)
        return folder

    def adapter_size(
        self, adapter_name: str | None = None, *, mask_encoding: str = DEFAULT_MASK_ENCODING
    ) -> dict[str, float]:
        """Bytes an adapter takes in an artifact saved with ``mask_encoding``, and bits per entry.

        Keys: ``mask_bytes`` and ``bits_per_masked_weight`` (the masks as stored),
        ``packed_mask_bytes`` and ``packed_bits_per_masked_weight`` (1 bit per plane entry),
        ``entropy_bits_per_masked_weight`` (the masks' empirical order-0 entropy, see
        :meth:`mask_stats`), ``module_bytes`` (heads, norms, saved modules) and
        ``masked_weights``.
        """
        name = adapter_name or self.active_adapter
        if name is None:
            raise AdapterNotFoundError("no adapter is active; pass adapter_name")
        self._require_adapter(name)
        data, packed, planes = self._artifact(name, None, None)
        stored, _ = encode_bit_planes(packed, planes, mask_encoding)

        def nbytes(tensors: dict[str, Tensor], prefix: str) -> int:
            return sum(
                t.numel() * t.element_size() for k, t in tensors.items() if k.startswith(prefix)
            )

        mask_bytes, packed_bytes = nbytes(stored, "layers."), nbytes(packed, "layers.")
        masked = max(sum(r["numel"] for r in data["modules"]), 1)
        return {
            "mask_bytes": mask_bytes,
            "packed_mask_bytes": packed_bytes,
            "module_bytes": nbytes(packed, "modules."),
            "masked_weights": masked,
            "bits_per_masked_weight": 8 * mask_bytes / masked,
            "packed_bits_per_masked_weight": 8 * packed_bytes / masked,
            "entropy_bits_per_masked_weight": self.mask_stats(name).entropy_bits / masked,
        }

    # ------------------------------------------------------------------ loading
    def _plan_load(self, folder: Path, adapter_name: str, verify_base: bool) -> _LoadPlan:
        """Check an artifact against this model and read its tensors; change nothing."""
        data = read_adapter_config(folder)
        config = self._read_config(folder, data["config"])
        spec = get_method(config.method)
        current = self._method_of_model()
        if current is not None and current != config.method:
            raise ArtifactError(
                f"the artifact is a {config.method!r} adapter but this model holds {current!r} ones"
            )
        if spec.layer_class.shared_state and current is not None:
            raise ArtifactError(
                f"this model already holds {config.method!r} tasks, which share their layers; load "
                "the artifact onto a fresh base model (it restores all of its tasks)"
            )
        # (name, record, tensor prefix) of every task the artifact holds, oldest first
        tasks: list[tuple[str, dict[str, Any], str]] = []
        if spec.layer_class.shared_state:
            for record in data.get("tasks") or []:
                tasks.append((record["name"], record, f"tasks.{record['name']}."))
            adapter_name = data.get("task_name") or adapter_name
        tasks.append((adapter_name, data, "modules."))
        names = [validate_adapter_name(name) for name, _, _ in tasks]
        for name in names:
            if name in self.peft_config:
                raise ConfigError(
                    f"an adapter named {name!r} is already loaded; delete_adapter it first"
                )
        if len(set(names)) != len(names):
            raise ArtifactError(f"the artifact names a task twice: {names}")
        architecture = data["base_model"].get("architecture") or "another model"

        expected: dict[str, tuple[torch.dtype | None, tuple[int, ...]]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for record in data["modules"]:
            path = record["name"]
            try:
                module = self.base_model.get_submodule(path)
            except AttributeError:
                raise ArtifactError(
                    f"the base model has no module {path!r}; the adapter was made for {architecture}"
                ) from None
            if isinstance(module, AdapterLayer):
                if not isinstance(module, spec.layer_class):
                    raise ArtifactError(f"module {path!r} already holds a {type(module).__name__}")
                module = module.base_layer
            if not is_supported_layer(module):
                raise ArtifactError(
                    f"module {path!r} is a {type(module).__name__}, which cannot carry a mask"
                )
            shape = tuple(module.weight.shape)
            if list(shape) != record["shape"]:
                raise ArtifactError(
                    f"module {path!r} has weight shape {list(shape)} but the adapter expects "
                    f"{record['shape']}; the adapter was made for {architecture}"
                )
            shapes[path] = shape
            for key, spec_tuple in spec.layer_class.expected_tensors(shape, config).items():
                expected[f"layers.{path}.{key}"] = spec_tuple

        planned: list[_TaskPlan] = []
        with self._base_installed():
            for name, record, prefix in tasks:
                task_config = (
                    config if record is data else self._read_config(folder, record["config"])
                )
                if task_config.method != config.method:
                    raise ArtifactError(f"task {name!r} is not a {config.method!r} task")
                modules = self._plan_task_modules(
                    task_config, record, prefix, expected, architecture
                )
                planned.append(_TaskPlan(name, task_config, record, prefix, modules))
            if verify_base:
                self._verify_fingerprint(data)

        tensors = read_adapter_tensors(
            folder, expected, data["weights_sha256"], data.get("tensor_encodings")
        )
        layer_tensors: dict[str, dict[str, Tensor]] = {}
        for path, shape in shapes.items():
            prefix = f"layers.{path}."
            own_tensors = {
                k[len(prefix) :]: v
                for k, v in tensors.items()
                if k.startswith(prefix) and "." not in k[len(prefix) :]
            }
            try:
                spec.layer_class.check_import(shape, own_tensors, config)
            except ArtifactError as err:
                raise ArtifactError(f"module {path!r}: {err}") from None
            layer_tensors[path] = own_tensors
        for task in planned:
            for path, (_, module) in task.modules.items():
                prefix = f"{task.prefix}{path}."
                state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                reference = next(iter(_module_tensors(module).values()), None)
                if reference is not None:
                    state = {
                        k: v.to(dtype=reference.dtype, device=reference.device)
                        for k, v in state.items()
                    }
                module.load_state_dict(state, strict=False)
        return _LoadPlan(tasks=planned, layer_tensors=layer_tensors)

    @staticmethod
    def _read_config(folder: Path, data: dict[str, Any]) -> AdapterConfig:
        try:
            return AdapterConfig.from_dict(data)
        except ConfigError as err:
            raise ArtifactError(f"{folder}: invalid adapter config: {err}") from None

    def _plan_task_modules(
        self,
        config: AdapterConfig,
        record: dict[str, Any],
        prefix: str,
        expected: dict[str, tuple[torch.dtype | None, tuple[int, ...]]],
        architecture: str,
    ) -> dict[str, tuple[str, nn.Module]]:
        """Fresh task modules for one stored task, checked against its records (base installed)."""
        head_paths = record["head"]["paths"]
        if sorted(head_paths) != sorted(self._head_paths):
            raise ArtifactError(
                f"the adapter's heads are at {head_paths} but this model's are at {self._head_paths}; "
                f"the adapter was made for {architecture}"
            )
        modules: dict[str, tuple[str, nn.Module]] = {}
        fresh = self._new_task_modules(config)
        for saved in record.get("saved_modules", []):
            path, kind = saved["path"], saved["kind"]
            if path not in fresh or fresh[path][0] != kind:
                raise ArtifactError(
                    f"the artifact stores a {kind} at {path!r}, which this model does not have"
                )
            module = fresh[path][1]
            own = {k: tuple(v.shape) for k, v in _module_tensors(module).items()}
            recorded = {k: tuple(v) for k, v in saved["tensors"].items()}
            if own != recorded:
                raise ArtifactError(
                    f"the {kind} at {path!r} has tensors {own} here but {recorded} in the artifact"
                )
            for key, shape in own.items():
                expected[f"{prefix}{path}.{key}"] = (None, shape)
            modules[path] = (kind, module)
        missing = sorted(set(fresh) - set(modules))
        if missing:
            raise ArtifactError(f"the artifact lacks the task modules {missing}")
        return modules

    def _verify_fingerprint(self, data: dict[str, Any]) -> None:
        expected = data["base_model"]["fingerprint"]
        actual = self.base_fingerprint()
        if expected != actual:
            base = data["base_model"]
            where = base.get("name_or_path") or base.get("architecture") or "unknown"
            revision = f" at revision {base['revision']}" if base.get("revision") else ""
            raise BaseModelMismatchError(
                f"the base model's weights differ from those the adapter was trained on "
                f"(expected {expected[:19]}..., got {actual[:19]}...). The adapter was made for "
                f"{where}{revision}: create the base from exactly that checkpoint, in its original "
                "dtype, or pass verify_base=False if you know the difference is harmless."
            )

    def _apply_plan(self, plan: _LoadPlan, is_trainable: bool) -> None:
        spec = get_method(plan.tasks[0].config.method)
        layers = self._wrap_targets(list(plan.layer_tensors), spec.layer_class)
        # The artifact's own config (the newest task) first: its tensors were checked against it.
        for task in reversed(plan.tasks):
            for path, layer in layers.items():
                layer.import_adapter(task.name, plan.layer_tensors[path], task.config, is_trainable)
        for task in plan.tasks:
            self.peft_config[task.name] = task.config
            labels = task.record.get("id2label")
            state = self._labels_for(task.config)
            if labels:
                state.id2label = {int(k): v for k, v in labels.items()}
                state.label2id = task.record.get("label2id") or {
                    v: k for k, v in state.id2label.items()
                }
            if task.record["head"].get("num_labels") is not None:
                state.num_labels = task.record["head"]["num_labels"]
            self._labels[task.name] = state
            self._register_task_modules(task.name, task.modules)
            if task.record.get("metrics") is not None or task.record.get("datasets") is not None:
                self._recorded[task.name] = (
                    task.record.get("metrics"),
                    task.record.get("datasets"),
                )
            if not is_trainable:
                self._frozen.add(task.name)
                self.task_modules[task.name].requires_grad_(False)  # switches skip frozen tasks
        first = plan.tasks[-1].name
        self.set_adapter(first if self.active_adapter is None else self.active_adapter)

    def load_adapter(
        self,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        is_trainable: bool = False,
        verify_base: bool = True,
    ) -> None:
        """Load an adapter from a local folder or a Hub repository onto this model.

        Everything is checked first (format version, module names, shapes, tensors, and the base
        fingerprint unless ``verify_base=False``); on any error the model is left exactly as it
        was. Loaded adapters are frozen unless ``is_trainable``. Like PEFT, loading does not
        change the active adapter unless none was active.

        Args:
            model_id: A local artifact folder or a Hub repo id (``"user/cars-mask"``).
            adapter_name: Name the adapter gets on this model.
            revision: Hub branch, tag or commit.
            subfolder: Folder of the task inside the repository (or local folder).
            token: Hub token (``None``: ``HF_TOKEN`` or the saved login).
            cache_dir: Hub cache folder.
            local_files_only: Use the Hub cache only, never the network.
            is_trainable: Load the masks as trainable parameters to continue training.
            verify_base: Check that the base weights are those the adapter was trained on.
        """
        validate_adapter_name(adapter_name)
        folder = resolve_adapter_folder(
            model_id,
            revision=revision,
            subfolder=subfolder,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        plan = self._plan_load(folder, adapter_name, verify_base)
        self._apply_plan(plan, is_trainable)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module | str,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        is_trainable: bool = False,
        verify_base: bool = True,
        base_revision: str | None = None,
    ) -> PiggybackModel:
        """Attach a saved adapter (local folder or Hub repo) to a base model.

        ``model`` is the plain base, an existing :class:`PiggybackModel` (which is then
        extended), or a string naming the base (timm name, ``hf-hub:`` id, transformers id or
        folder), created at ``base_revision`` or else at the revision the artifact records. On
        any error the base model is left exactly as it was. See :meth:`load_adapter` for the
        other arguments.
        """
        hub_kwargs: dict[str, Any] = {
            "revision": revision,
            "subfolder": subfolder,
            "token": token,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
        }
        if isinstance(model, PiggybackModel):
            model.load_adapter(
                model_id,
                adapter_name,
                is_trainable=is_trainable,
                verify_base=verify_base,
                **hub_kwargs,
            )
            return model
        validate_adapter_name(adapter_name)
        folder = resolve_adapter_folder(model_id, **hub_kwargs)
        if isinstance(model, str):
            recorded = read_adapter_config(folder)["base_model"]
            same_base = normalize_base_name(model) == normalize_base_name(
                recorded.get("name_or_path") or ""
            )
            pinned = "@" in model  # a revision in the name itself wins over the recorded one
            model = load_base_model(
                model,
                revision=base_revision
                or (recorded.get("revision") if same_base and not pinned else None),
                library=recorded.get("library") if same_base else None,
                token=token,
                cache_dir=cache_dir,
            )
        # Plan against a wrapper that has not wrapped anything yet; remember the base's
        # requires_grad flags, which creating the wrapper changes, to restore them on failure.
        flags = [(p, p.requires_grad) for p in model.parameters()]
        wrapper = cls(model)
        try:
            plan = wrapper._plan_load(folder, adapter_name, verify_base)
        except BaseException:
            for param, flag in flags:
                param.requires_grad_(flag)
            raise
        wrapper._apply_plan(plan, is_trainable)
        return wrapper

    def push_to_hub(
        self,
        repo_id: str,
        adapter_name: str | None = None,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        subfolder: str | None = None,
        metrics: dict[str, Any] | None = None,
        datasets: list[str] | None = None,
    ) -> str:
        r"""Upload one adapter (default: the active one) with its model card to the Hub.

        The repository (and the branch ``revision``) is created when missing; several tasks can
        share a repository under different ``subfolder``\ s. Returns the commit url.
        """
        # Refuse bad names before anything is written, even to a temporary folder.
        validate_hub_target(repo_id, revision=revision, subfolder=subfolder)
        name = adapter_name or self.active_adapter
        if name is None:
            raise AdapterNotFoundError("no adapter to push: add or load one first")
        self._require_adapter(name)
        with tempfile.TemporaryDirectory(prefix="pb-adapters-push-") as tmp:
            folder = Path(tmp) / "artifact"
            self.save_pretrained(
                folder,
                adapter_name,
                metrics=metrics,
                datasets=datasets,
                repo_id=repo_id,
                subfolder=subfolder,
            )
            return push_folder_to_hub(
                folder,
                repo_id,
                private=private,
                token=token,
                revision=revision,
                commit_message=commit_message
                or f"Upload {adapter_name or self.active_adapter} adapter",
                create_pr=create_pr,
                subfolder=subfolder,
                write_card=False,
            )


def get_piggyback_model(
    model: nn.Module, config: AdapterConfig, adapter_name: str = "default"
) -> PiggybackModel:
    """Inject adapter layers into ``model`` and return the wrapper with ``adapter_name`` active.

    The base weights are frozen; the new adapter's masks start at their initial state (for
    piggyback: all ones, so the outputs equal the base model's) and its head is fresh when
    ``config.num_labels`` is set.
    """
    wrapper = model if isinstance(model, PiggybackModel) else PiggybackModel(model)
    wrapper.add_adapter(adapter_name, config)
    wrapper.set_adapter(adapter_name)
    return wrapper
