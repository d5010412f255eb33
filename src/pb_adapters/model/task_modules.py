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
from ..targeting import find_norm_paths, match_module_names

__all__ = ["module_key", "module_path", "module_tensors", "new_task_modules", "set_submodule"]


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


def new_task_modules(
    base_model: nn.Module, head_paths: list[str], config: AdapterConfig
) -> dict[str, tuple[str, nn.Module]]:
    """Fresh head(s), and per-task norm / saved-module copies, for a new adapter.

    ``base_model`` must hold the base's own modules (no task's copies) when this is called.
    Returns ``{path: (kind, module)}`` with kind ``"head"``, ``"norm"`` or ``"module"``.
    """
    modules: dict[str, tuple[str, nn.Module]] = {}
    if config.num_labels is not None and not head_paths:
        raise TargetingError(
            f"cannot find the classifier head of {type(base_model).__name__} to give the task "
            "its own; set pretrained_cfg['classifier'] (timm) or use a *ForImageClassification model"
        )
    for path in head_paths:
        if config.num_labels is not None:
            head = create_task_head(base_model, path, config.num_labels)
        else:
            head = copy_head(base_model, path)
        modules[path] = ("head", head)
    if config.train_norms:
        for path in find_norm_paths(base_model, skip=head_paths):
            modules[path] = ("norm", copy.deepcopy(base_model.get_submodule(path)))
    if config.modules_to_save:
        names = [n for n, _ in base_model.named_modules() if n]
        for path in match_module_names(names, config.modules_to_save):
            if path not in modules:
                modules[path] = ("module", copy.deepcopy(base_model.get_submodule(path)))
    return modules
