"""Names the package accepts from users and artifacts: adapter names and base-model names."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

__all__ = ["TIMM_HUB_PREFIXES", "normalize_base_name", "split_revision", "validate_adapter_name"]

#: How timm names a model on the Hub: ``hf-hub:<repo id>[@revision]``; ``hf_hub:`` is timm's legacy
#: spelling of the same prefix.
TIMM_HUB_PREFIXES: tuple[str, ...] = ("hf-hub:", "hf_hub:")

_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def validate_adapter_name(name: Any) -> str:
    """Refuse adapter names that could not be used as a folder or module key."""
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
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
