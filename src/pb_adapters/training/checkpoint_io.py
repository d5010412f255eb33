"""A checkpoint's files, read without pickle and checked before anything uses them.

Every checkpoint records a manifest (each file's size and SHA-256) in its JSON state, which is
written last. :class:`CheckpointReader` reads a file only if it is a regular file of the recorded
size and hash, and only with ``json`` or ``safetensors``: a JSON file above
:data:`MAX_JSON_BYTES` or a tensors file larger than the tensors it must hold is refused unread,
and a tensors file must list exactly the expected names, dtypes and shapes before any tensor is
built. Files the manifest does not name (a planted ``optimizer.bin`` or ``random_states_0.pkl``)
are never opened. Every problem is a :class:`~pb_adapters.training.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from pb_adapters.training.errors import CheckpointError

__all__ = [
    "MAX_JSON_BYTES",
    "CheckpointReader",
    "Expected",
    "file_manifest",
    "read_json_file",
    "sha256_file",
    "shard_file",
]

#: The largest JSON file of a checkpoint that is parsed (state, optimiser index, schedule).
MAX_JSON_BYTES = 32 * 1024 * 1024
# Room for a safetensors header beyond the tensor bytes: a file larger than the expected
# tensors plus this is refused before it is opened.
_HEADER_ALLOWANCE = 1024 * 1024
_HEADER_BYTES_PER_TENSOR = 4096
_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}

#: What a reader expects of a tensors file: name -> (dtype, shape); a dtype of ``None`` accepts
#: any floating dtype.
Expected = dict[str, tuple[torch.dtype | None, tuple[int, ...]]]


def shard_file(name: str, shard: int | None) -> str:
    """``name``, or process ``shard``'s slice of it under FSDP: ``model.shard-00001.safetensors``
    for ``model.safetensors``."""
    if shard is None:
        return name
    stem, _, suffix = name.partition(".")
    return f"{stem}.shard-{shard:05d}.{suffix}"


def sha256_file(path: Path) -> str:
    """The SHA-256 of ``path``'s bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hash}}`` of the files ``names`` in ``folder``."""
    return {
        name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
        for name in sorted(names)
    }


def _regular_file(path: Path, what: str) -> int:
    """The size of ``path``, which must be a regular file (not a folder, FIFO or device)."""
    try:
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the checkpoint lacks its {what}")
        return path.stat().st_size
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None


def read_json_file(path: Path, what: str) -> Any:
    """Parse ``path`` as JSON (at most :data:`MAX_JSON_BYTES`)."""
    size = _regular_file(path, what)
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path} is {size} bytes, more than a checkpoint's {what} can be")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({what}): {err}") from None


class CheckpointReader:
    """Reads the files of one checkpoint folder against its manifest.

    Args:
        folder: the checkpoint folder.
        manifest: ``{file name: {"bytes": int, "sha256": str}}`` from the checkpoint's state.
    """

    def __init__(self, folder: Path, manifest: Any) -> None:
        self.folder = folder
        if not isinstance(manifest, dict) or not all(
            isinstance(k, str)
            and isinstance(v, dict)
            and isinstance(v.get("bytes"), int)
            and isinstance(v.get("sha256"), str)
            for k, v in manifest.items()
        ):
            raise CheckpointError(f"{folder}: the file list in its state is malformed")
        self.manifest: dict[str, dict[str, Any]] = manifest

    def has(self, name: str) -> bool:
        """Whether the manifest names ``name``."""
        return name in self.manifest

    def _checked(self, name: str, what: str, limit: int) -> Path:
        """The path of ``name`` after its size (at most ``limit``) and hash were checked."""
        entry = self.manifest.get(name)
        path = self.folder / name
        if entry is None:
            raise CheckpointError(f"{self.folder} does not list a {name} ({what})")
        size = _regular_file(path, what)
        if size != entry["bytes"] or size > limit:
            raise CheckpointError(
                f"{path} is {size} bytes, but the checkpoint recorded {entry['bytes']} "
                f"(the most its {what} can take is {limit}): the file is truncated or replaced"
            )
        if sha256_file(path) != entry["sha256"]:
            raise CheckpointError(f"{path} does not match its recorded hash: the file is corrupt")
        return path

    def json(self, name: str, what: str) -> Any:
        """The parsed JSON file ``name``."""
        return read_json_file(self._checked(name, what, MAX_JSON_BYTES), what)

    def tensors(
        self,
        name: str,
        what: str,
        expected: Expected,
        *,
        optional: Expected | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors of ``name`` and its string metadata. The file must hold exactly the
        ``expected`` tensors (names, dtypes, shapes), plus any of the ``optional`` ones."""
        optional = optional or {}
        limit = _HEADER_ALLOWANCE + sum(
            _HEADER_BYTES_PER_TENSOR + math.prod(shape) * (8 if dtype is None else dtype.itemsize)
            for dtype, shape in (*expected.values(), *optional.values())
        )
        path = self._checked(name, what, limit)
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
                _expect_keys(path, keys - set(optional), set(expected))
                wanted = {**{k: optional[k] for k in keys & set(optional)}, **expected}
                for key, (dtype, shape) in wanted.items():
                    _check_slice(path, key, handle.get_slice(key), dtype, shape)
                tensors = {key: handle.get_tensor(key) for key in wanted}
                meta = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from None
        return tensors, meta


def _expect_keys(path: Path, found: set[str], wanted: set[str]) -> None:
    missing, extra = sorted(wanted - found), sorted(found - wanted)
    if missing or extra:
        raise CheckpointError(
            f"{path} does not fit this run: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else "",
                    f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}" if extra else "",
                )
                if part
            )
            + " (was it written for another model, method or optimiser?)"
        )


def _check_slice(
    path: Path, key: str, piece: Any, dtype: torch.dtype | None, shape: tuple[int, ...]
) -> None:
    found_shape = tuple(piece.get_shape())
    found_dtype = _DTYPES.get(piece.get_dtype())
    if found_shape != tuple(shape):
        raise CheckpointError(
            f"{path}: tensor {key!r} has shape {list(found_shape)}, expected {list(shape)}"
        )
    ok = (
        found_dtype is not None and found_dtype.is_floating_point
        if dtype is None
        else found_dtype == dtype
    )
    if not ok:
        raise CheckpointError(
            f"{path}: tensor {key!r} has dtype {piece.get_dtype()}, expected "
            f"{'a floating dtype' if dtype is None else dtype}"
        )
