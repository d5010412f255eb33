"""What is written beside an artifact: ``README.md`` (the card), ``mask_sparsity.png`` and the
small ``config.json`` the Hub counts downloads by, made in memory and replaced together."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..serialization import (
    ARTIFACT_WEIGHTS_NAME,
    prepare_folder,
    read_adapter_config,
    storage_error,
)
from ..utils.files import atomic_write_bytes, folder_lock, remove_leftovers, replace_files
from .names import CARD_NAME, HUB_CONFIG_NAME, LIBRARY_NAME, PLOT_NAME
from .plot import sparsity_png
from .render import build_model_card
from .summary import summarize_adapter


def hub_config(adapter_config: dict[str, Any]) -> dict[str, Any]:
    """The small ``config.json`` placed beside the artifact (the Hub counts its downloads)."""
    summary = summarize_adapter(adapter_config)
    return {
        "library_name": LIBRARY_NAME,
        "method": summary.method,
        "format_version": summary.format_version,
        "base_model": summary.base_name,
        "base_model_revision": summary.base_revision,
        "base_model_weights": summary.base_weights,
        "base_library": summary.base_library,
        "architecture": summary.base_architecture,
        "num_labels": summary.num_labels,
    }


def write_hub_config(folder: str | Path, adapter_config: dict[str, Any]) -> Path:
    """Write :func:`hub_config` as ``config.json`` in ``folder``."""
    path = Path(folder) / HUB_CONFIG_NAME
    atomic_write_bytes(path, _hub_config_bytes(adapter_config))
    return path


def _hub_config_bytes(adapter_config: dict[str, Any]) -> bytes:
    return (json.dumps(hub_config(adapter_config), indent=2) + "\n").encode()


def render_card_files(
    adapter_config: dict[str, Any],
    weights: bytes | None = None,
    repo_id: str | None = None,
    *,
    subfolder: str | None = None,
) -> dict[str, bytes | None]:
    """The card files of an artifact, made in memory: ``{file name: bytes}``.

    ``README.md``, ``config.json`` and ``mask_sparsity.png``; the plot maps to ``None`` (delete
    any old one) when the artifact records no per-layer counts. ``weights`` (the weights file's
    bytes) gives exact sizes. Nothing is written, so a save can refuse before touching its folder.
    """
    summary = summarize_adapter(adapter_config, weights=weights)
    png = sparsity_png(summary)
    card = build_model_card(
        adapter_config,
        repo_id,
        subfolder=subfolder,
        weights=weights,
        plot_name=PLOT_NAME if png is not None else None,
    )
    return {
        CARD_NAME: str(card).encode("utf-8"),
        PLOT_NAME: png,
        HUB_CONFIG_NAME: _hub_config_bytes(adapter_config),
    }


def write_model_card(
    folder: str | Path,
    adapter_config: dict[str, Any] | None = None,
    repo_id: str | None = None,
    *,
    subfolder: str | None = None,
) -> Path:
    """Write ``README.md``, ``mask_sparsity.png`` and ``config.json`` into an artifact folder.

    The three files are made in memory (:func:`render_card_files`), then replaced together under
    the folder's lock: all of them, or on an error none.

    ``adapter_config`` defaults to the folder's validated ``adapter_config.json``. The plot is
    written only when the artifact records per-layer counts (and the card links it only then).
    Returns the path of ``README.md``.

    Raises:
        ArtifactError: the folder's artifact is missing or malformed.
        StorageError: the card files could not be written (the old ones are kept).
    """
    folder = Path(folder)
    prepare_folder(folder)
    try:
        with folder_lock(folder):
            if adapter_config is None:
                adapter_config = read_adapter_config(folder)
            weights = None
            with contextlib.suppress(OSError):
                weights = (folder / ARTIFACT_WEIGHTS_NAME).read_bytes()
            files = render_card_files(adapter_config, weights, repo_id, subfolder=subfolder)
            remove_leftovers(folder, list(files))
            replace_files(folder, files)
    except OSError as err:
        raise storage_error(err, f"write the model card in {folder}") from None
    return folder / CARD_NAME
