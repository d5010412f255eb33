"""Per-task copies of whole modules (heads, norms, ``modules_to_save``) and where they live.

Each task owns its own copy of these modules; the wrapper keeps them in module dictionaries keyed
by the module's escaped path and swaps them into the base model on ``set_adapter``.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from ..config import AdapterConfig
from ..errors import TargetingError
from ..heads import copy_head, create_task_head
from ..methods.base import AdapterLayer
from ..targeting import find_norm_paths, match_module_names, unmatched_names

__all__ = [
    "module_key",
    "module_path",
    "module_tensors",
    "new_task_modules",
    "set_submodule",
    "task_module_kinds",
    "task_module_shapes",
]


def module_key(path: str) -> str:
    """A module path as a ``ModuleDict`` key (dots are not allowed in keys)."""
    # Module paths are dotted identifiers; '-' never occurs in one, so the escape is reversible.
    return path.replace(".", "-")


def module_path(key: str) -> str:
    """Inverse of :func:`module_key`."""
    return key.replace("-", ".")


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``path`` under ``root``."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def module_tensors(module: nn.Module) -> dict[str, Tensor]:
    """A task module's stored tensors: parameters and persistent buffers, no step counters."""
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def _plain_module_names(model: nn.Module) -> list[str]:
    """Module paths of ``model``, without the root and without the inside of adapter layers."""
    names: list[str] = []
    wrapped: str | None = None
    for name, module in model.named_modules():  # depth first: a layer's children follow it
        if not name or (wrapped is not None and name.startswith(wrapped + ".")):
            continue
        if isinstance(module, AdapterLayer):
            wrapped = name
        names.append(name)
    return names


def task_module_kinds(
    base_model: nn.Module, head_paths: list[str], config: AdapterConfig
) -> dict[str, str]:
    """Which modules a new adapter gets its own copy of: ``{path: kind}``; allocates nothing.

    Kinds are ``"head"``, ``"norm"`` and ``"module"`` (``modules_to_save``). ``base_model`` must
    hold the base's own modules (no task's copies).
    """
    if config.num_labels is not None and not head_paths:
        raise TargetingError(
            f"cannot find the classifier head of {type(base_model).__name__} to give the task "
            "its own; set pretrained_cfg['classifier'] (timm) or use a *ForImageClassification model"
        )
    kinds = {path: "head" for path in head_paths}
    if config.train_norms:
        for path in find_norm_paths(base_model, skip=head_paths):
            kinds[path] = "norm"
    if config.modules_to_save:
        names = _plain_module_names(base_model)
        missing = unmatched_names(names, config.modules_to_save)
        if missing:
            raise TargetingError(
                f"modules_to_save names {missing[:5]}{' ...' if len(missing) > 5 else ''}, which "
                f"match no module of {type(base_model).__name__}"
            )
        for path in match_module_names(names, config.modules_to_save):
            kinds.setdefault(path, "module")
    return kinds


def task_module_shapes(
    base_model: nn.Module, head_paths: list[str], config: AdapterConfig
) -> dict[str, tuple[str, dict[str, tuple[int, ...]]]]:
    """``{path: (kind, {tensor key: shape})}`` of the modules :func:`new_task_modules` would make,
    computed without allocating them (a fresh head is made on the ``meta`` device)."""
    shapes: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {}
    for path, kind in task_module_kinds(base_model, head_paths, config).items():
        if kind == "head" and config.num_labels is not None:
            module = create_task_head(base_model, path, config.num_labels, device="meta")
        else:  # a copy has the shapes of the base's own module
            module = base_model.get_submodule(path)
        shapes[path] = (kind, {k: tuple(v.shape) for k, v in module_tensors(module).items()})
    return shapes


def new_task_modules(
    base_model: nn.Module, head_paths: list[str], config: AdapterConfig
) -> dict[str, tuple[str, nn.Module]]:
    """Fresh head(s), and per-task norm / saved-module copies, for a new adapter.

    ``base_model`` must hold the base's own modules (no task's copies) when this is called.
    Returns ``{path: (kind, module)}`` with kind ``"head"``, ``"norm"`` or ``"module"``.
    """
    modules: dict[str, tuple[str, nn.Module]] = {}
    for path, kind in task_module_kinds(base_model, head_paths, config).items():
        if kind == "head":
            if config.num_labels is not None:
                module = create_task_head(base_model, path, config.num_labels)
            else:
                module = copy_head(base_model, path)
        else:
            module = copy.deepcopy(base_model.get_submodule(path))
        modules[path] = (kind, module)
    return modules
