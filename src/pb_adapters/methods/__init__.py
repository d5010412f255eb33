"""The method registry: each adapter method plugs into the wrapper through one entry here.

A method is a folder holding its config class and its layer class. The wrapper
(:class:`pb_adapters.PiggybackModel`) looks methods up by the config's ``method`` string and
knows nothing else about them, so adding a method touches one new folder and one line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..config import AdapterConfig
from ..errors import ConfigError
from .base import AdapterLayer

__all__ = ["MethodSpec", "available_methods", "get_method", "register_method"]


@dataclass(frozen=True)
class MethodSpec:
    """What the wrapper needs to know about a method.

    Attributes:
        name: The ``method`` string stored in configs and artifacts.
        config_class: The method's :class:`~pb_adapters.config.AdapterConfig` subclass.
        layer_class: The :class:`~pb_adapters.methods.base.AdapterLayer` subclass that wraps each
            targeted module.
        training_schedule: ``"module:function"`` of a function ``(namespace, print_fn) ->
            summary`` that runs the method's own multi-phase training from the command line
            (``--method NAME``); ``None``: the standard single-run trainer.
    """

    name: str
    config_class: type[AdapterConfig]
    layer_class: type[AdapterLayer]
    training_schedule: str | None = None


_REGISTRY: dict[str, MethodSpec] = {}

# The built-in methods, imported on first use: name -> module that calls register_method.
_BUILTIN_METHODS: dict[str, str] = {
    "piggyback": "pb_adapters.methods.piggyback",
    "ksm": "pb_adapters.methods.ksm",
    "packnet": "pb_adapters.methods.packnet",
}


def register_method(spec: MethodSpec) -> None:
    """Make a method available to configs, the wrapper and the artifact loader."""
    if spec.config_class.method != spec.name:
        raise ValueError(f"{spec.config_class.__name__}.method must be {spec.name!r}")
    _REGISTRY[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    """Return the registered method called ``name``; raise :class:`ConfigError` if there is none."""
    if name not in _REGISTRY and name in _BUILTIN_METHODS:
        importlib.import_module(_BUILTIN_METHODS[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown adapter method {name!r}; available: {', '.join(available_methods())}"
        ) from None


def available_methods() -> list[str]:
    """Names of every method that can be used, built-in or registered."""
    return sorted(set(_BUILTIN_METHODS) | set(_REGISTRY))
