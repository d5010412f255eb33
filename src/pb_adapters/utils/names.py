"""Names the package accepts from users and artifacts: adapter names and base-model names."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

__all__ = ["normalize_base_name", "validate_adapter_name"]

_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def validate_adapter_name(name: Any) -> str:
    """Refuse adapter names that could not be used as a folder or module key."""
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def normalize_base_name(name: str) -> str:
    """A base name without its ``@revision``, with timm's ``hf_hub:`` spelled ``hf-hub:``."""
    name = name.split("@", 1)[0]
    return "hf-hub:" + name[len("hf_hub:") :] if name.startswith("hf_hub:") else name
