"""The wrapper class: creating it (on a base, or from an artifact), the adapter lifecycle (add,
set, delete, disable), training mode and forward (one task, or mixed tasks per sample).

Saving, loading, merging, base identity and reports are mixed in from their own modules
(:mod:`.saving`, :mod:`.loading`, :mod:`.merging`, :mod:`.identity`, :mod:`.stats`); they work on
the state set up here.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..batching import mixed_batch_forward
from ..config import AdapterConfig
from ..errors import AdapterNotFoundError, ConfigError, PbAdaptersError
from ..heads import LabelState, get_label_state, set_label_state
from ..hub import resolve_adapter_folder
from ..methods import get_method
from ..methods.base import AdapterLayer
from ..serving import ServingCache
from ..targeting import find_head_paths, is_norm_layer, model_family, resolve_target_modules
from ..utils.names import validate_adapter_name
from .identity import IdentityMixin
from .loading import LoadingMixin, load_named_base
from .merging import MergingMixin
from .saving import SavingMixin
from .state import register_state_hooks
from .stats import StatsMixin
from .task_modules import module_key, module_path, new_task_modules, set_submodule
from .transformers_compat import classification_output, register_pipeline_support

__all__ = ["BASE_ADAPTER_NAME", "PiggybackModel", "get_piggyback_model"]

#: The name that stands for "no adapter, the plain base" in ``adapter_names=``.
BASE_ADAPTER_NAME = "__base__"


class PiggybackModel(LoadingMixin, SavingMixin, MergingMixin, StatsMixin, IdentityMixin, nn.Module):
    """A frozen, shared base model plus any number of per-task adapters.

    Create one with :func:`get_piggyback_model` (to train a new task) or
    :meth:`PiggybackModel.from_pretrained` (to use a saved one); ``PiggybackModel(model,
    peft_config)`` also adds a first adapter, as ``PeftModel`` does. Calling the wrapper calls
    the base model, with the active adapter's masks, head and label metadata in place (see
    :meth:`forward`).

    ``state_dict()`` names every tensor once (the active head lives in the base model and in
    the per-task store), so ``transformers.Trainer`` and safetensors can save it, and
    ``load_state_dict`` restores it exactly.

    Attributes:
        base_model: The wrapped timm / transformers model (its targeted layers replaced by
            adapter layers that read through to the originals).
        peft_config: ``{adapter name: config}``.
        active_adapter: The adapter in use, or ``None`` for the plain base.
    """

    #: ``transformers.Trainer`` reads this: the loss :meth:`forward` returns is a batch mean,
    #: so Trainer scales it for gradient accumulation and passes no ``num_items_in_batch``.
    accepts_loss_kwargs = False
    # Read by transformers.Trainer after loading a checkpoint: no key is left out on purpose.
    _keys_to_ignore_on_save: list[str] | None = None

    def __init__(
        self,
        model: nn.Module,
        peft_config: AdapterConfig | None = None,
        adapter_name: str = "default",
    ) -> None:
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
        self._base_requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        # merge_adapter: layer path -> the original weight the merged one stands in for
        self._unmerged_weights: dict[str, nn.Parameter] = {}
        self._merged_adapter: str | None = None
        self._originals_in_place = False
        self._is_transformers = model_family(model) == "transformers"
        for param in model.parameters():
            param.requires_grad_(False)
        register_state_hooks(self)
        if self._is_transformers:
            register_pipeline_support(type(self).__name__)
        self.train(model.training)  # a base in eval mode stays in eval mode
        if peft_config is not None:
            self.add_adapter(adapter_name, peft_config)

    # ------------------------------------------------------------------ passthrough
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
        try:
            return getattr(self.base_model, name)
        except AttributeError:
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute '{name}'"
            ) from None

    def forward(
        self,
        *args: Any,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        adapter_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call the base model with the active adapter in place.

        Called the way the base is called, the wrapper returns what the base returns: timm
        ``model(images)`` gives logits, transformers ``model(pixel_values=...)`` an
        ``ImageClassifierOutput``. Called the Hugging Face way (``pixel_values=``, or with
        ``labels=``), a timm or torch base gives an ``ImageClassifierOutput`` too, so
        ``transformers.Trainer`` trains on every base.

        Args:
            pixel_values: The images (the keyword transformers' tools pass).
            labels: Targets; the output then holds ``loss`` as transformers computes it (cross
                entropy for class indices, binary cross entropy for multi-label targets, mean
                squared error for one output). A transformers base computes it itself.
            adapter_names: For a mixed-task batch in eval mode, the adapter of each sample
                (``BASE_ADAPTER_NAME`` for the plain base). Each sample gets exactly what its task
                gives; logits of tasks with fewer classes are padded with ``-inf``.
        """
        if pixel_values is not None and args:
            raise TypeError("pass the images positionally or as pixel_values=, not both")
        if adapter_names is not None:
            self._require_unmerged("mix tasks with adapter_names=")
            if labels is not None:
                raise PbAdaptersError(
                    "adapter_names= mixes tasks for inference only; it takes no labels="
                )
        if self._is_transformers:
            # transformers bases take both keywords and compute their own loss.
            if pixel_values is not None:
                kwargs["pixel_values"] = pixel_values
            if labels is not None:
                kwargs["labels"] = labels
        elif pixel_values is not None:
            args = (pixel_values,)
        if adapter_names is None:
            output = self.base_model(*args, **kwargs)
        else:
            output = self._mixed_forward(list(adapter_names), args, kwargs)
        if self._is_transformers or (pixel_values is None and labels is None):
            return output
        return classification_output(output, labels)

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
        previous = self.active_adapter
        try:
            return mixed_batch_forward(
                self.serving,
                [None if name == BASE_ADAPTER_NAME else name for name in names],
                args,
                kwargs,
                run=self.base_model,
                run_group=self._run_group,
                modules_of=self._modules_of,
                get_module=self.base_model.get_submodule,
                set_module=lambda path, module: set_submodule(self.base_model, path, module),
            )
        finally:
            if previous is not None and self.active_adapter != previous:
                self.set_adapter(previous)

    def _run_group(self, task: str | None, args: Any, kwargs: Any) -> Any:
        """The base model on one task's rows of a mixed batch (``None``: the plain base)."""
        if task is None:
            with self.disable_adapter():
                return self.base_model(*args, **kwargs)
        self.set_adapter(task)
        return self.base_model(*args, **kwargs)

    def _modules_of(self, task: str | None) -> dict[str, nn.Module]:
        """``{path: module}`` of the whole modules (heads, norms) task ``task`` swaps in."""
        modules = dict(self.base_modules.items())
        modules.update(self.task_modules[task].items() if task is not None else ())
        return {module_path(key): module for key, module in modules.items()}

    @property
    def family(self) -> str:
        """``"timm"``, ``"transformers"`` or ``"torch"``."""
        return model_family(self.base_model)

    @property
    def active_adapters(self) -> list[str]:
        """The active adapter as a list (empty for none), as PEFT reports it."""
        return [self.active_adapter] if self.active_adapter is not None else []

    def get_base_model(self) -> nn.Module:
        """The base model, with the adapter layers in it (as PEFT's ``get_base_model``)."""
        return self.base_model

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

    def _named_or_active(self, adapter_name: str | None, error: str) -> str:
        """``adapter_name``, else the active adapter; ``error`` is the message when neither is set."""
        name = adapter_name or self.active_adapter
        if name is None:
            raise AdapterNotFoundError(error)
        self._require_adapter(name)
        return name

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
                set_submodule(self.base_model, path, module)
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
            return new_task_modules(self.base_model, self._head_paths, config)

    def _register_task_modules(self, name: str, modules: dict[str, tuple[str, nn.Module]]) -> None:
        with self._base_installed():
            store = nn.ModuleDict()
            for path, (_, module) in modules.items():
                if module_key(path) not in self.base_modules:
                    self.base_modules[module_key(path)] = self.base_model.get_submodule(path)
                store[module_key(path)] = module
            self.task_modules[name] = store.train(self.training)  # switches keep modes as they are
        self._module_kinds[name] = {module_key(path): kind for path, (kind, _) in modules.items()}

    def _labels_for(self, config: AdapterConfig) -> LabelState:
        if config.num_labels is None:
            return copy.deepcopy(self._base_labels)
        id2label = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
        label2id = config.label2id or {v: k for k, v in id2label.items()}
        return LabelState(config.num_labels, dict(id2label), dict(label2id))

    def add_adapter(
        self,
        adapter_name: str,
        config: AdapterConfig | None = None,
        *,
        peft_config: AdapterConfig | None = None,
    ) -> None:
        """Add a new, trainable adapter (masks at their start state, a fresh head).

        Like PEFT, this does not make the new adapter active; call :meth:`set_adapter`.
        ``peft_config=`` is PEFT's name for ``config``.
        """
        config = _one_config(config, peft_config)
        self._require_unmerged("add an adapter")
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
        previous = self.active_adapter
        originals = {path: self.base_model.get_submodule(path) for path in targets}
        base_keys = set(self.base_modules.keys())
        try:
            for path, layer in self._wrap_targets(targets, spec.layer_class).items():
                if not isinstance(layer, spec.layer_class):
                    raise ConfigError(f"module {path!r} already holds a {type(layer).__name__}")
                layer.add_adapter(adapter_name, config)
            self.peft_config[adapter_name] = config
            self._labels[adapter_name] = self._labels_for(config)
            self._register_task_modules(adapter_name, task_modules)
            for _, module in task_modules.values():
                module.requires_grad_(False)
            self.set_adapter(adapter_name if previous is None else previous)
        except BaseException:  # a layer refused the adapter part way: take back what was added
            self._take_back([adapter_name], previous, originals, base_keys)
            raise

    def _install(self, name: str | None) -> None:
        """Put adapter ``name``'s task modules (or the base's, for ``None``) into the base model."""
        own = dict(self.task_modules[name].items()) if name is not None else {}
        for key, base_module in self.base_modules.items():
            module = own.get(key, base_module)
            path = module_path(key)
            if self.base_model.get_submodule(path) is not module:
                set_submodule(self.base_model, path, module)

    @contextlib.contextmanager
    def _base_installed(self) -> Iterator[None]:
        previous = self.active_adapter
        try:
            self._install(None)  # inside the try: a swap failing part way is put back too
            with self._original_weights():
                yield
        finally:
            self._install(previous)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active task: its masks, head, norms and labels take effect.

        Only the active adapter's parameters are trainable.
        """
        self._require_unmerged("set_adapter")
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
        self._require_unmerged("delete an adapter")
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
                self._activate_base()

    def _activate_base(self) -> None:
        """No adapter active: the base's own modules, labels and weights in every layer."""
        self.active_adapter = None
        self._install(None)
        set_label_state(self.base_model, self._base_labels)
        for _, layer in self.adapter_layers():
            layer.set_adapter(None)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[PiggybackModel]:
        """Within the block the model is the plain base model, with the base head."""
        self._require_unmerged("disable_adapter")
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

    # ------------------------------------------------------------------ training helpers
    def train(self, mode: bool = True) -> PiggybackModel:
        """Set training mode; norm layers the active task does not train stay in eval mode.

        Frozen BatchNorm in eval mode keeps its running statistics untouched, as in the official
        piggyback code.
        """
        if mode:
            self._require_unmerged("train")
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
        folder: Path | None = None
        if isinstance(model, str):
            folder = resolve_adapter_folder(model_id, **hub_kwargs)
            model = load_named_base(model, folder, base_revision, token, cache_dir)
        elif not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch module or a name, not {type(model).__name__}")
        # The load itself takes back any layer it wrapped; the wrapper's own changes to the
        # base (frozen weights, norm layers' modes) are given back here.
        with _given_back_on_failure(model):
            wrapper = cls(model)
            if folder is None:
                # a download is checked against this base before the weights are fetched
                limit = wrapper._weights_limit(adapter_name, str(model_id))
                folder = resolve_adapter_folder(model_id, weights_limit=limit, **hub_kwargs)
            plan = wrapper._plan_load(folder, adapter_name, verify_base)
            wrapper._apply_plan(plan, is_trainable)
        return wrapper


def _one_config(config: AdapterConfig | None, peft_config: AdapterConfig | None) -> AdapterConfig:
    """The config passed as ``config`` or under PEFT's name ``peft_config``."""
    if config is not None and peft_config is not None:
        raise ConfigError("pass the adapter config once, as config= or as peft_config=")
    if config is None and peft_config is None:
        raise ConfigError("an adapter config is required (config= or peft_config=)")
    return config if config is not None else peft_config  # type: ignore[return-value]


def get_piggyback_model(
    model: nn.Module,
    config: AdapterConfig | None = None,
    adapter_name: str = "default",
    *,
    peft_config: AdapterConfig | None = None,
) -> PiggybackModel:
    """Inject adapter layers into ``model`` and return the wrapper with ``adapter_name`` active.

    The base weights are frozen; the new adapter's masks start at their initial state (for
    piggyback: all ones, so the outputs equal the base model's) and its head is fresh when
    ``config.num_labels`` is set. ``peft_config=`` is PEFT's name for ``config``
    (``get_peft_model(model, peft_config)``).
    """
    config = _one_config(config, peft_config)
    if isinstance(model, PiggybackModel):
        model.add_adapter(adapter_name, config)
        model.set_adapter(adapter_name)
        return model
    with _given_back_on_failure(model):
        wrapper = PiggybackModel(model)
        wrapper.add_adapter(adapter_name, config)  # the first adapter becomes the active one
    return wrapper


@contextlib.contextmanager
def _given_back_on_failure(model: nn.Module) -> Iterator[None]:
    """If the block fails, give ``model`` back the ``requires_grad`` flags and train/eval modes
    it had (wrapping a base freezes it and sets its norm layers' modes)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    except BaseException:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
        raise
