"""Loading adapters: check and read everything first (the plan), then change the model (apply).

:meth:`LoadingMixin._plan_load` checks an artifact against the model and reads its tensors into
fresh task modules without touching the model; :meth:`LoadingMixin._apply_plan` installs what the
plan holds, and takes it all back if a step fails. A load refused or failing for any reason
therefore leaves the model exactly as it was.

Sizes the artifact declares are checked before anything is allocated for them: the task
modules' shapes are worked out without making the modules, compared with the records and with
the weights file, and the modules are made only then.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..bases import load_base_model
from ..config import AdapterConfig
from ..errors import ArtifactError, ConfigError, TargetingError
from ..hub import resolve_adapter_folder
from ..methods import get_method
from ..methods.base import AdapterLayer, is_supported_layer
from ..registry import MethodSpec
from ..serialization import read_adapter_config, read_adapter_tensors, weights_size_limit
from ..targeting import injectable_paths
from ..utils.files import folder_lock
from ..utils.names import normalize_base_name, validate_adapter_name
from .task_modules import module_tensors, new_task_modules, set_submodule, task_module_shapes

__all__ = ["LoadingMixin", "load_named_base"]

# Tensors an artifact must hold: key -> (dtype, or None for the dtype of the module it loads
# into; shape).
_Expected = dict[str, tuple[torch.dtype | None, tuple[int, ...]]]


@dataclass
class _TaskPlan:
    """One task of an artifact, ready to install."""

    name: str
    config: AdapterConfig
    record: dict[str, Any]  # the artifact's fields about this task (labels, head, metrics)
    prefix: str  # where its module tensors live in the weights file
    shapes: dict[str, tuple[str, dict[str, tuple[int, ...]]]]  # path -> (kind, tensor shapes)
    # path -> (kind, module ready to install); made only once the weights are read and checked
    modules: dict[str, tuple[str, nn.Module]] = field(default_factory=dict)


@dataclass
class _LoadPlan:
    """Everything a load needs, checked against the model before anything is changed."""

    tasks: list[_TaskPlan]  # oldest first; one task unless the method shares layer state
    layer_tensors: dict[str, dict[str, Tensor]]


def _read_config(folder: Path, data: dict[str, Any]) -> AdapterConfig:
    try:
        return AdapterConfig.from_dict(data)
    except ConfigError as err:
        raise ArtifactError(f"{folder}: invalid adapter config: {err}") from None


def _architecture(data: dict[str, Any]) -> str:
    """The base architecture an artifact (its config ``data``) names, for error messages."""
    return data["base_model"].get("architecture") or "another model"


def _split_layer_tensors(
    tensors: dict[str, Tensor],
    shapes: dict[str, tuple[int, ...]],
    spec: MethodSpec,
    config: AdapterConfig,
) -> dict[str, dict[str, Tensor]]:
    """Each masked layer's own tensors, checked by the method's layer class."""
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
    return layer_tensors


def _fill_task_modules(planned: list[_TaskPlan], tensors: dict[str, Tensor]) -> None:
    """Load the stored tensors into each planned (not yet installed) task module."""
    for task in planned:
        for path, (_, module) in task.modules.items():
            prefix = f"{task.prefix}{path}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            reference = next(iter(module_tensors(module).values()), None)
            if reference is not None:
                state = {
                    k: v.to(dtype=reference.dtype, device=reference.device)
                    for k, v in state.items()
                }
            module.load_state_dict(state, strict=False)


def load_named_base(
    name: str,
    folder: Path,
    base_revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
) -> nn.Module:
    """The base model ``name`` names; for the base the artifact records, at its revision."""
    recorded = read_adapter_config(folder)["base_model"]
    same_base = normalize_base_name(name) == normalize_base_name(recorded.get("name_or_path") or "")
    pinned = "@" in name  # a revision in the name itself wins over the recorded one
    return load_base_model(
        name,
        revision=base_revision or (recorded.get("revision") if same_base and not pinned else None),
        library=recorded.get("library") if same_base else None,
        token=token,
        cache_dir=cache_dir,
    )


class LoadingMixin:
    """Adapter loading of :class:`~pb_adapters.PiggybackModel`, mixed into it (uses its adapter
    state, task-module plumbing and base identity)."""

    def _check_artifact_method(self, config: AdapterConfig, spec: MethodSpec) -> None:
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

    def _artifact_tasks(
        self, data: dict[str, Any], adapter_name: str, spec: MethodSpec
    ) -> list[tuple[str, dict[str, Any], str]]:
        """``(name, record, tensor prefix)`` of every task the artifact holds, oldest first."""
        tasks: list[tuple[str, dict[str, Any], str]] = []
        if spec.layer_class.shared_state:
            for record in data.get("tasks") or []:
                tasks.append((record["name"], record, f"tasks.{record['name']}."))
            adapter_name = data.get("task_name") or adapter_name
        tasks.append((adapter_name, data, "modules."))
        try:
            names = [validate_adapter_name(name) for name, _, _ in tasks]
        except ConfigError as err:
            raise ArtifactError(f"the artifact names a task badly: {err}") from None
        for name in names:
            if name in self.peft_config:
                raise ConfigError(
                    f"an adapter named {name!r} is already loaded; delete_adapter it first"
                )
        if len(set(names)) != len(names):
            raise ArtifactError(f"the artifact names a task twice: {names}")
        return tasks

    def _plan_layer(
        self, path: str, spec: MethodSpec, architecture: str, injectable: set[str]
    ) -> nn.Module:
        """The plain base layer at ``path``, refused when it cannot carry the method's mask."""
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
        if path not in injectable:
            # a head (each task replaces it, the mask would be dropped) or the inside of an
            # adapter layer (wrapping it would nest adapter layers)
            raise ArtifactError(
                f"module {path!r} is not a layer a mask may be put on (the classifier head or a "
                f"part of an adapter layer); the adapter was made for {architecture}"
            )
        return module

    def _plan_layers(
        self,
        records: list[dict[str, Any]],
        spec: MethodSpec,
        config: AdapterConfig,
        architecture: str,
    ) -> tuple[_Expected, dict[str, tuple[int, ...]]]:
        """The tensors the masked layers must have, and each layer's weight shape, checked."""
        expected: _Expected = {}
        shapes: dict[str, tuple[int, ...]] = {}
        with self._base_installed():
            injectable = set(injectable_paths(self.base_model))
            for record in records:
                path = record["name"]
                layer = self._plan_layer(path, spec, architecture, injectable)
                shape = tuple(layer.weight.shape)
                if list(shape) != record["shape"]:
                    raise ArtifactError(
                        f"module {path!r} has weight shape {list(shape)} but the adapter expects "
                        f"{record['shape']}; the adapter was made for {architecture}"
                    )
                shapes[path] = shape
                for key, spec_tuple in spec.layer_class.expected_tensors(shape, config).items():
                    expected[f"layers.{path}.{key}"] = spec_tuple
        return expected, shapes

    def _plan_tasks(
        self,
        folder: Path | str,
        data: dict[str, Any],
        config: AdapterConfig,
        tasks: list[tuple[str, dict[str, Any], str]],
        expected: _Expected,
    ) -> list[_TaskPlan]:
        """Every task's modules checked against its records, their tensors added to
        ``expected``; nothing is allocated for them yet."""
        planned: list[_TaskPlan] = []
        with self._base_installed():
            for name, record, prefix in tasks:
                task_config = config if record is data else _read_config(folder, record["config"])
                if task_config.method != config.method:
                    raise ArtifactError(f"task {name!r} is not a {config.method!r} task")
                shapes = self._plan_task_modules(
                    task_config, record, prefix, expected, _architecture(data)
                )
                planned.append(_TaskPlan(name, task_config, record, prefix, shapes))
        return planned

    def _plan_task_modules(
        self,
        config: AdapterConfig,
        record: dict[str, Any],
        prefix: str,
        expected: _Expected,
        architecture: str,
    ) -> dict[str, tuple[str, dict[str, tuple[int, ...]]]]:
        """The shapes of one stored task's modules, checked against its records (base
        installed). Computed without making the modules, so a config that declares a huge head
        costs nothing before the weights file is found not to hold it."""
        head_paths = record["head"]["paths"]
        if sorted(head_paths) != sorted(self._head_paths):
            raise ArtifactError(
                f"the adapter's heads are at {head_paths} but this model's are at {self._head_paths}; "
                f"the adapter was made for {architecture}"
            )
        try:
            predicted = task_module_shapes(self.base_model, self._head_paths, config)
        except TargetingError as err:
            raise ArtifactError(
                f"the adapter's task modules do not fit this model: {err}"
            ) from None
        planned: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {}
        for saved in record.get("saved_modules", []):
            path, kind = saved["path"], saved["kind"]
            if path in planned or path not in predicted or predicted[path][0] != kind:
                raise ArtifactError(
                    f"the artifact stores a {kind} at {path!r}, which this model does not have"
                    + (" (twice)" if path in planned else "")
                )
            own = predicted[path][1]
            recorded = {k: tuple(v) for k, v in saved["tensors"].items()}
            if own != recorded:
                raise ArtifactError(
                    f"the {kind} at {path!r} has tensors {own} here but {recorded} in the artifact"
                )
            for key, shape in own.items():
                expected[f"{prefix}{path}.{key}"] = (None, shape)
            planned[path] = predicted[path]
        missing = sorted(set(predicted) - set(planned))
        if missing:
            raise ArtifactError(f"the artifact lacks the task modules {missing}")
        return planned

    def _build_task_modules(self, planned: list[_TaskPlan], tensors: dict[str, Tensor]) -> None:
        """Make every planned task's modules and load their (checked) tensors into them."""
        with self._base_installed():
            for task in planned:
                task.modules = new_task_modules(self.base_model, self._head_paths, task.config)
                made = {
                    path: (kind, {k: tuple(v.shape) for k, v in module_tensors(module).items()})
                    for path, (kind, module) in task.modules.items()
                }
                if made != task.shapes:  # never expected: the shapes were predicted from these
                    raise ArtifactError(f"task {task.name!r}: its modules differ from the plan")
        _fill_task_modules(planned, tensors)

    def _plan_records(
        self, folder: Path | str, data: dict[str, Any], adapter_name: str
    ) -> tuple[AdapterConfig, MethodSpec, _Expected, dict[str, tuple[int, ...]], list[_TaskPlan]]:
        """Check an artifact's config ``data`` against this model: its method, task names,
        masked layers and task modules. Reads no weights and allocates nothing."""
        config = _read_config(folder, data["config"])
        spec = get_method(config.method)
        self._check_artifact_method(config, spec)
        tasks = self._artifact_tasks(data, adapter_name, spec)
        expected, shapes = self._plan_layers(data["modules"], spec, config, _architecture(data))
        planned = self._plan_tasks(folder, data, config, tasks, expected)
        return config, spec, expected, shapes, planned

    def _weights_limit(self, adapter_name: str, source: str) -> Callable[[dict[str, Any]], int]:
        """For a download: the largest weights file the config ``data`` can have on this model
        (its records are checked against the model first, so a misfit is refused undownloaded)."""

        def limit(data: dict[str, Any]) -> int:
            return weights_size_limit(self._plan_records(source, data, adapter_name)[2])

        return limit

    def _plan_load(self, folder: Path, adapter_name: str, verify_base: bool) -> _LoadPlan:
        """Check an artifact against this model and read its tensors; change nothing.

        Runs under the folder's shared lock, so a save into the folder meanwhile waits and the
        config and weights read are one save's pair.
        """
        with folder_lock(folder, shared=True):
            data = read_adapter_config(folder)
            config, spec, expected, shapes, planned = self._plan_records(folder, data, adapter_name)
            if verify_base:
                self._verify_fingerprint(data)
            tensors = read_adapter_tensors(
                folder, expected, data["weights_sha256"], data.get("tensor_encodings")
            )
        layer_tensors = _split_layer_tensors(tensors, shapes, spec, config)
        self._build_task_modules(planned, tensors)
        return _LoadPlan(tasks=planned, layer_tensors=layer_tensors)

    def _apply_plan(self, plan: _LoadPlan, is_trainable: bool) -> None:
        """Install a plan; if anything fails part way, take back what was installed."""
        previous = self.active_adapter
        originals = {path: self.base_model.get_submodule(path) for path in plan.layer_tensors}
        base_keys = set(self.base_modules.keys())
        try:
            self._install_plan(plan, is_trainable)
        except BaseException:
            self._take_back([task.name for task in plan.tasks], previous, originals, base_keys)
            raise

    def _install_plan(self, plan: _LoadPlan, is_trainable: bool) -> None:
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

    def _take_back(
        self,
        names: list[str],
        previous: str | None,
        originals: dict[str, nn.Module],
        base_keys: set[str],
    ) -> None:
        """Remove the adapters ``names`` that an install (a load, ``add_adapter``) added before it
        failed, and put the model back as it was: the modules at ``originals``' paths, the
        ``base_modules`` keys ``base_keys`` and ``previous`` as the active adapter."""
        self._install(None)  # the base's own modules back everywhere, while all are known
        for path, original in originals.items():
            current = self.base_model.get_submodule(path)
            if isinstance(current, AdapterLayer):
                for name in names:
                    if name in current.adapter_names:
                        current.delete_adapter(name)
            if current is not original:
                set_submodule(self.base_model, path, original)
        for name in names:
            if name in self.task_modules:
                del self.task_modules[name]
            for store in (self.peft_config, self._module_kinds, self._labels, self._recorded):
                store.pop(name, None)
            self._frozen.discard(name)
        for key in set(self.base_modules.keys()) - base_keys:
            del self.base_modules[key]
        self._activate_base()
        if previous is not None:
            self.set_adapter(previous)
        else:
            self.train(self.training)

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
        self._require_unmerged("load an adapter")
        validate_adapter_name(adapter_name)
        folder = resolve_adapter_folder(
            model_id,
            revision=revision,
            subfolder=subfolder,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            weights_limit=self._weights_limit(adapter_name, str(model_id)),
        )
        plan = self._plan_load(folder, adapter_name, verify_base)
        self._apply_plan(plan, is_trainable)
