"""The wrapper's ``state_dict``: every tensor once, and the base weights as they are unmerged.

The active task's head (and per-task norms) are installed into the base model *and* kept in the
wrapper's per-task store, so a plain ``state_dict`` would list the same tensor under two names
(``base_model.classifier.weight`` and ``task_modules.default.classifier.weight``), which
safetensors refuses to write. The hooks here leave out the name inside the base model and put it
back when loading, so ``state_dict`` / ``load_state_dict`` round-trip exactly and
``transformers.Trainer`` (which saves ``model.state_dict()`` with safetensors) can checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from ..errors import PbAdaptersError
from .task_modules import module_path

__all__ = ["register_state_hooks"]


def _aliases(model: Any) -> Iterator[tuple[str, str]]:
    """``(name inside the base model, name of the store that owns it)`` of every swapped module."""
    for key, base_module in model.base_modules.items():
        path = module_path(key)
        installed = model.base_model.get_submodule(path)
        if installed is base_module:
            yield f"base_model.{path}.", f"base_modules.{key}."
            continue
        for name, store in model.task_modules.items():
            if key in store and store[key] is installed:
                yield f"base_model.{path}.", f"task_modules.{name}.{key}."
                break


def _state_dict_hook(
    model: Any, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    for alias, _ in _aliases(model):
        for key in [k for k in state_dict if k.startswith(prefix + alias)]:
            del state_dict[key]
    # A merged model computes with merged weights, but its state is the unmerged one.
    for path, original in model._unmerged_weights.items():
        key = f"{prefix}base_model.{path}.base_layer.weight"
        if key in state_dict:
            keep = isinstance(state_dict[key], nn.Parameter)  # state_dict(keep_vars=True)
            state_dict[key] = original if keep else original.detach()


def _load_pre_hook(
    model: Any,
    state_dict: dict[str, Tensor],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    if model._unmerged_weights:
        raise PbAdaptersError("the model is merged; call unmerge_adapter() before load_state_dict")
    # Fill in whichever of the two names of a swapped module's tensor the dict lacks (older
    # files may hold the name inside the base model only).
    for alias, source in _aliases(model):
        for first, second in ((prefix + source, prefix + alias), (prefix + alias, prefix + source)):
            for key in [k for k in state_dict if k.startswith(first)]:
                state_dict.setdefault(second + key[len(first) :], state_dict[key])


def register_state_hooks(model: nn.Module) -> None:
    """Make ``model.state_dict()`` name each tensor once and ``load_state_dict`` accept it."""
    register = getattr(model, "register_state_dict_post_hook", None)
    if register is None:  # torch < 2.4
        register = model._register_state_dict_hook
    register(_state_dict_hook)
    model._register_load_state_dict_pre_hook(_load_pre_hook, with_module=True)
