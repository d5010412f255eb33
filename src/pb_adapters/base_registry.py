"""Named base models: names that create a base without timm's or transformers' lookup.

:func:`pb_adapters.bases.load_base_model` (and so ``PiggybackModel.from_pretrained("<name>",
...)``) asks this registry first; model cards ask it how to show the base in their usage snippet.
The offline demo backbone (``"pb-adapters-demo:tf_efficientnet_lite0"``) is the built-in entry.

This module sits below the card and the loaders: it imports neither, and the built-in bases are
imported by name on first use, as the method registry does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["BaseSpec", "get_base", "is_registered_base", "register_base", "registered_bases"]


@dataclass(frozen=True)
class BaseSpec:
    """A base model known by name.

    Attributes:
        name: The name recorded as ``base_model.name_or_path`` in artifacts.
        loader: Creates the base (pretrained weights, classifier included), taking no arguments.
            :func:`~pb_adapters.bases.load_base_model` marks what it creates as the weights of
            ``name``, so adapters trained on it record ``name`` while those weights are unchanged.
        card_imports: Import lines of the model card's usage snippet.
        card_code: Lines of that snippet that build ``base``. By default the card shows
            ``load_base_model(name)``, which works wherever the base is registered.
    """

    name: str
    # Plain callable: this module imports neither torch nor the loaders, which sit above it.
    loader: Callable[[], Any]
    card_imports: tuple[str, ...] = ("from pb_adapters.bases import load_base_model",)
    card_code: tuple[str, ...] = ()

    def usage(self) -> tuple[list[str], list[str]]:
        """The card snippet's import lines and the lines that build ``base``."""
        code = list(self.card_code) or [f"base = load_base_model({self.name!r})"]
        return list(self.card_imports), code


_REGISTRY: dict[str, BaseSpec] = {}

# The built-in bases, imported on first use: name -> module that calls register_base.
_BUILTIN_BASES: dict[str, str] = {
    "pb-adapters-demo:tf_efficientnet_lite0": "pb_adapters.demo_base",
}


def register_base(spec: BaseSpec) -> None:
    """Make ``spec.name`` a base that loaders create with ``spec.loader`` and cards describe."""
    if not isinstance(spec.name, str) or not spec.name.strip() or spec.name != spec.name.strip():
        raise ConfigError(
            f"a base name must be a non-empty string without spaces around it, got {spec.name!r}"
        )
    _REGISTRY[spec.name] = spec


def is_registered_base(name: object) -> bool:
    """Whether ``name`` is a registered (or built-in) base; never imports anything."""
    return isinstance(name, str) and (name in _REGISTRY or name in _BUILTIN_BASES)


def get_base(name: str) -> BaseSpec:
    """The registered base called ``name``; raise :class:`ConfigError` if there is none."""
    if name not in _REGISTRY and name in _BUILTIN_BASES:
        importlib.import_module(_BUILTIN_BASES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown base {name!r}; registered: {', '.join(registered_bases()) or 'none'}"
        ) from None


def registered_bases() -> list[str]:
    """Names of every registered base, built-in or not."""
    return sorted(set(_BUILTIN_BASES) | set(_REGISTRY))
