"""Checks of the model names and data paths a command line is given, before any work is done.

A misspelt model or a missing folder should cost one line and no wait, not a traceback after the
data has loaded. Both checks are offline: a model name is checked against timm's model list and
the registered bases (:mod:`pb_adapters.base_registry`), with close names suggested; a name that
only the Hub can resolve (``org/name``, ``hf-hub:...``) is left to the loader, whose error names
the repository.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from pb_adapters.base_registry import is_registered_base, registered_bases
from pb_adapters.errors import ConfigError
from pb_adapters.training.data import DataError

__all__ = ["check_dataset_source", "check_model_name", "close_names"]

_SUGGESTIONS = 3


def close_names(name: str, candidates: Iterable[str], n: int = _SUGGESTIONS) -> list[str]:
    """Up to ``n`` of ``candidates`` spelled most like ``name`` (case-insensitive)."""
    return difflib.get_close_matches(name.lower(), list(candidates), n=n, cutoff=0.6)


def _is_remote_name(name: str) -> bool:
    """A name only the Hub (or a loader's own lookup) can resolve."""
    return "/" in name or name.startswith(("hf-hub:", "hf_hub:"))


def check_model_name(name: str | None, *, library: str = "auto", option: str = "--model") -> None:
    """Refuse a model name that no loader would find, suggesting close timm or base names.

    Accepted without a lookup: ``None`` (the demo), a registered base, an existing path, a Hub
    name (``org/name``, ``hf-hub:``) and any name with ``library="transformers"``. Any other name
    must be a timm architecture, with a pretrained tag timm knows if it has one.

    Raises:
        ConfigError: the name is unknown; the message lists close names.
    """
    if name is None or is_registered_base(name) or Path(name).exists():
        return
    if library == "transformers" or _is_remote_name(name):
        return
    import timm

    arch, _, tag = name.partition(".")
    if timm.is_model(arch):
        if not tag or name in timm.list_pretrained(f"{arch}.*"):
            return
        close = close_names(name, timm.list_pretrained(f"{arch}.*"))
        known = (
            f"did you mean {', '.join(close)}?" if close else "timm.list_pretrained() lists them"
        )
        raise ConfigError(
            f"{option} {name}: timm has no pretrained tag {tag!r} for {arch}; {known}"
        )
    close = close_names(name, [*timm.list_models(), *registered_bases()])
    known = (
        f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists timm's names"
    )
    where = "a timm model" if library == "timm" else "a timm model, a registered base or a folder"
    hub = "" if library == "timm" else " (a transformers model is named org/name)"
    raise ConfigError(f"{option} {name}: not {where}; {known}{hub}")


def _looks_like_a_path(source: str) -> bool:
    """Whether ``source`` names a local folder rather than a ``datasets`` name (``org/name``)."""
    parent = Path(source).parent
    return (
        Path(source).is_absolute()
        or source.startswith(("./", "../", "~", ".\\", "..\\"))
        or "\\" in source
        or source.count("/") > 1
        or (str(parent) != "." and parent.is_dir())  # data/train where data/ is here
    )


def check_dataset_source(source: str | None, *, option: str = "--dataset") -> None:
    """Refuse a data source that names a local folder which does not exist, or a file.

    ``None``, named sources (``demo``) and ``datasets`` names (``name``, ``org/name``) pass:
    only their loader can tell whether they exist.

    Raises:
        DataError: ``source`` is a file, or a path (absolute, ``./...``, ``~/...``, several
            levels, or under a folder that exists) and nothing is there.
    """
    if source is None or Path(source).is_dir():
        return
    if Path(source).exists():
        raise DataError(
            f"{option} {source} is a file: pass an image folder, a folder saved by `datasets` "
            "or a `datasets` name"
        )
    if _looks_like_a_path(source):
        raise DataError(f"{option} {source}: no such folder")
