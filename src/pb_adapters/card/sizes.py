"""What an artifact's masks and task modules take on disk: exact sizes from the header of its
weights file, or, without the file, estimates from the encodings its config records."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from .values import int_or_none

_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _header_sizes(header: Any) -> dict[str, int] | None:
    """Byte size of every tensor a parsed safetensors header lists; ``None`` if it is malformed."""
    if not isinstance(header, dict):
        return None
    sizes = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(int_or_none(o) is not None for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return None  # sizes from a header that lies would be wrong; report them unknown
        sizes[key] = offsets[1] - offsets[0]
    return sizes


def _safetensors_sizes(source: Path | bytes) -> dict[str, int] | None:
    """Byte size of every tensor in a safetensors file (a path or its bytes), from its header
    only; ``None`` when the header cannot be read or is malformed."""
    try:
        if isinstance(source, bytes):
            if len(source) < 8:
                return None
            (length,) = struct.unpack("<Q", source[:8])
            if length > _MAX_HEADER_BYTES:
                return None
            text = source[8 : 8 + length]
        else:
            with source.open("rb") as handle:
                raw = handle.read(8)
                if len(raw) != 8:
                    return None
                (length,) = struct.unpack("<Q", raw)
                if length > _MAX_HEADER_BYTES:
                    return None
                text = handle.read(length)
        header = json.loads(text)
    except (OSError, ValueError, RecursionError):
        return None
    return _header_sizes(header)


def _estimated_mask_bytes(record: dict[str, Any]) -> int | None:
    encoding = str(record.get("encoding", ""))
    numel = int(record.get("numel", 0))
    if encoding == "bitpack":
        return math.ceil(numel / 8)
    if encoding == "bitpack+sign":
        return 2 * math.ceil(numel / 8)
    return None


def _weights_file(
    weights_path: str | Path | None, weights: bytes | None
) -> tuple[int | None, dict[str, int] | None]:
    """The weights file's size and its tensors' sizes (both ``None`` when unknown)."""
    file_bytes: int | None = None
    sizes = None
    if weights is not None:
        file_bytes, sizes = len(weights), _safetensors_sizes(weights)
    elif weights_path is not None:
        try:
            if Path(weights_path).is_file():
                file_bytes = Path(weights_path).stat().st_size
                sizes = _safetensors_sizes(Path(weights_path))
        except OSError:
            file_bytes = sizes = None
    return file_bytes, sizes


def _estimated_masks_bytes(
    adapter_config: dict[str, Any], modules: list[dict[str, Any]]
) -> int | None:
    """All masks' bytes from their recorded encodings; ``None`` unless every one is known."""
    coded = adapter_config.get("tensor_encodings") or {}
    # Coded planes have no size without the file; packed ones follow from their shape.
    estimates = [
        None
        if any(str(key).startswith(f"layers.{m.get('name')}.") for key in coded)
        else _estimated_mask_bytes(m)
        for m in modules
    ]
    if estimates and all(e is not None for e in estimates):
        return sum(e for e in estimates if e is not None)
    return None


def stored_bytes(
    adapter_config: dict[str, Any],
    modules: list[dict[str, Any]],
    weights_path: str | Path | None,
    weights: bytes | None,
) -> tuple[int | None, int | None, int | None]:
    """``(mask bytes, task module bytes, weights file bytes)``, each ``None`` when unknown.

    Exact from the weights file (a path, or its bytes as ``weights``) when it can be read; else
    only the masks' bytes, estimated from ``modules``, the config's per-layer records.
    """
    file_bytes, sizes = _weights_file(weights_path, weights)
    if sizes is None:
        return _estimated_masks_bytes(adapter_config, modules), None, file_bytes
    mask_bytes = sum(v for k, v in sizes.items() if k.startswith("layers."))
    module_bytes = sum(v for k, v in sizes.items() if k.startswith("modules."))
    return mask_bytes, module_bytes, file_bytes
