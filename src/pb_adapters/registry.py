"""The method registry: each adapter method plugs into the library through one entry here.

A method is a folder under :mod:`pb_adapters.methods` holding its config class and its layer class,
plus one :class:`MethodSpec` registered with :func:`register_method`. Everything the rest of the
library needs to know about a method (how cards describe and cite it, which learning-rate field
drives which parameter group, which config fields the command line exposes, whether it trains in
several phases) lives in that entry, so adding a method touches one new folder and one line in
``_BUILTIN_METHODS`` (or one ``register_method`` call for a method defined outside the package).

This module sits below the configs and the layers: it imports neither at run time, and the
built-in methods are imported by name on first use, as timm's model registry does.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_LR_FIELDS",
    "MethodSpec",
    "available_methods",
    "get_method",
    "register_method",
]

#: Parameter group -> the config field holding its learning rate, for mask methods. The group
#: names are those of :meth:`pb_adapters.PiggybackModel.parameter_groups`.
DEFAULT_LR_FIELDS: Mapping[str, str] = MappingProxyType(
    {"masks": "mask_lr", "head": "head_lr", "norms": "norm_lr", "modules": "head_lr"}
)


@dataclass(frozen=True)
class MethodSpec:
    """Everything the library knows about one adapter method.

    Attributes:
        name: The ``method`` string stored in configs and artifacts.
        config_class: The method's :class:`~pb_adapters.config.AdapterConfig` subclass.
        layer_class: The :class:`~pb_adapters.methods.base.AdapterLayer` subclass that wraps each
            targeted module.
        description: What a task of this method learns, as the first sentence of a model card
            says it ("a learned mask over the frozen base weights").
        citation: The method's paper as a BibTeX entry, for model cards (``None``: no citation).
        layer_group: Name of the parameter group holding the method's layer parameters (the
            masks' scores, PackNet's free weights) in
            :meth:`~pb_adapters.PiggybackModel.parameter_groups`.
        lr_fields: Parameter group -> the config field holding that group's learning rate. The
            trainer's ``mask_lr`` / ``head_lr`` / ``norm_lr`` arguments override the layer group,
            the head (and ``modules_to_save``) and the norms respectively, for every method.
        cli_options: Config field -> help text, for the fields the training command line exposes
            as ``--field-name`` options. Types and defaults come from the config dataclass; one
            option serves every method that has a field of that name.
        training_schedule: ``"module:function"`` of a function ``(namespace, print_fn) ->
            summary`` that runs the method's own multi-phase training from the command line;
            ``None``: the standard single-run trainer.
        schedule_options: Options of the training command line that only the method's own
            ``training_schedule`` reads: the option (``"--tasks"``) -> the keywords of
            ``argparse``'s ``add_argument`` for it (``help``, ``nargs``, ``action``...).
            Refused for every other method.
    """

    name: str
    # Plain ``type``: the config and layer modules sit above this one and import it.
    config_class: type
    layer_class: type
    description: str = "a learned mask over the frozen base weights"
    citation: str | None = None
    layer_group: str = "masks"
    lr_fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LR_FIELDS))
    cli_options: Mapping[str, str] = field(default_factory=dict)
    training_schedule: str | None = None
    schedule_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def lr_field(self, group: str) -> str:
        """The config field holding ``group``'s learning rate (the head's for unknown groups)."""
        return self.lr_fields.get(group, self.lr_fields.get("head", "head_lr"))


_REGISTRY: dict[str, MethodSpec] = {}

# The built-in methods, imported on first use: name -> module that calls register_method.
_BUILTIN_METHODS: dict[str, str] = {
    "piggyback": "pb_adapters.methods.piggyback",
    "ksm": "pb_adapters.methods.ksm",
    "packnet": "pb_adapters.methods.packnet",
}


def register_method(spec: MethodSpec) -> None:
    """Make a method available to configs, the wrapper, the trainer, the CLI and the loader."""
    if spec.config_class.method != spec.name:
        raise ConfigError(f"{spec.config_class.__name__}.method must be {spec.name!r}")
    if spec.layer_group not in spec.lr_fields:
        raise ConfigError(
            f"method {spec.name!r}: lr_fields has no learning rate for its layer group "
            f"{spec.layer_group!r}"
        )
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
