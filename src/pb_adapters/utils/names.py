"""Names the package accepts from users and artifacts: adapter names and base-model names."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = [
    "RESERVED_ADAPTER_NAMES",
    "TIMM_HUB_PREFIXES",
    "normalize_base_name",
    "split_revision",
    "validate_adapter_name",
]

#: How timm names a model on the Hub: ``hf-hub:<repo id>[@revision]``; ``hf_hub:`` is timm's legacy
#: spelling of the same prefix.
TIMM_HUB_PREFIXES: tuple[str, ...] = ("hf-hub:", "hf_hub:")

_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _reserved_names() -> frozenset[str]:
    """Every attribute name of the torch containers that hold per-adapter state.

    Adapters are keys of ``ModuleDict`` / ``ParameterDict`` (and dicts of buffers, which are plain
    modules), and those register each key as an attribute: a key that is already an attribute
    (``training``, ``state_dict``, ``keys``...) is refused by torch with a bare ``KeyError``, half
    way through adding the adapter. Read from the installed torch, so a method a later torch
    release adds is reserved too.
    """
    names: set[str] = set()
    for container in (nn.Module, nn.ModuleDict, nn.ParameterDict):
        names.update(dir(container))
        names.update(vars(container()))  # instance attributes set in __init__ (training...)
    return frozenset(name for name in names if _ADAPTER_NAME.fullmatch(name))


#: Names that are attributes of ``torch.nn.Module``, ``ModuleDict`` or ``ParameterDict``: no
#: adapter may be called so (see :func:`validate_adapter_name`).
RESERVED_ADAPTER_NAMES: frozenset[str] = _reserved_names()


def validate_adapter_name(name: Any) -> str:
    """Refuse adapter names that could not be used as a folder or module key.

    A name is 1-64 ASCII letters, digits, ``_`` or ``-``, starting with a letter or digit, and is
    not one of :data:`RESERVED_ADAPTER_NAMES` (attributes of torch's module containers).
    """
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    if name in RESERVED_ADAPTER_NAMES:
        raise ConfigError(
            f"adapter name {name!r} is reserved: torch modules use it as an attribute name, and "
            "adapters are stored as module keys; choose another name"
        )
    return name


def split_revision(name: str) -> tuple[str, str | None]:
    """``"repo@rev"`` -> ``("repo", "rev")``; a name without ``@`` -> ``(name, None)``."""
    repo_id, at, revision = name.partition("@")
    return repo_id, (revision if at else None)


def normalize_base_name(name: str) -> str:
    """A base name without its ``@revision``, with timm's ``hf_hub:`` spelled ``hf-hub:``."""
    name, _ = split_revision(name)
    for prefix in TIMM_HUB_PREFIXES[1:]:
        if name.startswith(prefix):
            return TIMM_HUB_PREFIXES[0] + name[len(prefix) :]
    return name
