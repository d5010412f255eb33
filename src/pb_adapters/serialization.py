"""The artifact format: bit packing, base fingerprints, and safe reading and writing.

An artifact is a folder with ``adapter_config.json`` (what the adapter is and what it applies to)
and ``adapter_model.safetensors`` (masks bit-packed as ``uint8``, head and norm weights). Nothing is
ever pickled. Readers validate everything they are given before anything else looks at it, and
writers replace files atomically so that a crash mid-save leaves the previous artifact intact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from .errors import ArtifactError, FormatVersionError

__all__ = [
    "ARTIFACT_CONFIG_NAME",
    "ARTIFACT_WEIGHTS_NAME",
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "bits_for_values",
    "count_zero_bits",
    "fingerprint_tensors",
    "iter_base_tensors",
    "pack_bits",
    "pack_uints",
    "packed_size",
    "read_adapter_config",
    "read_adapter_tensors",
    "unpack_bits",
    "unpack_uints",
    "write_artifact",
]

ARTIFACT_CONFIG_NAME = "adapter_config.json"
ARTIFACT_WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it
_MAX_CONFIG_BYTES = 64 * 1024 * 1024  # a config of millions of modules is still far below this

# Most significant bit first, as numpy.packbits does, so packed masks read the same in numpy.
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
# Row b holds the 8 bits of byte b: unpacking is one table lookup per byte, ~30x faster on CPU
# than shifting and masking every bit.
_UNPACK_TABLE = (torch.arange(256, dtype=torch.uint8)[:, None] & _BIT_WEIGHTS) != 0
_UNPACK_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


# ---------------------------------------------------------------------------- bit packing
def packed_size(numel: int) -> int:
    """Bytes needed to store ``numel`` bits."""
    return (numel + 7) // 8


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a boolean tensor (any shape, flattened in C order) into ``ceil(n/8)`` ``uint8`` bytes."""
    flat = bits.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = _BIT_WEIGHTS.to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: Tensor, numel: int, dtype: torch.dtype = torch.bool) -> Tensor:
    """Inverse of :func:`pack_bits`: a flat tensor of ``numel`` entries, 0/1 in ``dtype``."""
    key = (dtype, packed.device)
    table = _UNPACK_TABLES.get(key)
    if table is None:
        table = _UNPACK_TABLES[key] = _UNPACK_TABLE.to(device=packed.device, dtype=dtype)
    return table.index_select(0, packed.reshape(-1).long()).reshape(-1)[:numel]


def count_zero_bits(packed: Tensor, numel: int) -> int:
    """Number of 0 bits among the first ``numel`` bits of a packed tensor, without unpacking."""
    ones = int(_POPCOUNT.to(packed.device)[packed.reshape(-1).long()].sum())
    return numel - ones  # padding bits are always 0, so they never count as ones


def bits_for_values(count: int) -> int:
    """Bits per entry that hold the integers ``0 .. count - 1``: ``ceil(log2(count))``, at least 1."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return max(1, (count - 1).bit_length())


def pack_uints(values: Tensor, bits: int) -> Tensor:
    """Pack non-negative integers below ``2**bits`` into ``ceil(n * bits / 8)`` ``uint8`` bytes.

    Each value is written as ``bits`` bits, most significant first, one value after the other
    (flattened in C order); the padding bits of the last byte are 0.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    flat = values.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"values must lie in 0..{(1 << bits) - 1}")
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.int32, device=flat.device)
    return pack_bits(((flat[:, None] >> shifts) & 1).bool())


def unpack_uints(packed: Tensor, numel: int, bits: int) -> Tensor:
    """Inverse of :func:`pack_uints`: a flat ``int64`` tensor of ``numel`` values."""
    planes = unpack_bits(packed, numel * bits, torch.int64).view(numel, bits)
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.int64, device=packed.device)
    return (planes << shifts).sum(dim=1)


# ---------------------------------------------------------------------------- fingerprints
def iter_base_tensors(module: nn.Module, skip: Iterable[str] = ()) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for the base weights of a plain or wrapped model.

    Wrapped layers report their ``base_layer``'s tensors under the original names, so a wrapped
    model and the plain model it came from yield the same items. Modules whose path is in
    ``skip`` (the classifier head, which every task replaces) are left out, as are
    ``num_batches_tracked`` counters (they never change outputs).
    """
    from .methods.base import AdapterLayer  # local: methods import this module

    skipped = set(skip)
    seen: set[int] = set()

    def visit(current: nn.Module, path: str) -> Iterator[tuple[str, Tensor]]:
        if path in skipped:
            return
        if isinstance(current, AdapterLayer):
            current = current.base_layer
        prefix = f"{path}." if path else ""
        for name, param in current._parameters.items():
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                yield prefix + name, param
        for name, buf in current._buffers.items():
            if (
                buf is None
                or name == "num_batches_tracked"
                or name in current._non_persistent_buffers_set
            ):
                continue
            yield prefix + name, buf
        for name, child in current._modules.items():
            if child is not None:
                yield from visit(child, prefix + name)

    yield from visit(module, "")


def fingerprint_tensors(items: Iterable[tuple[str, Tensor]]) -> str:
    """A SHA-256 over names, dtypes, shapes and exact bytes of ``items`` (sorted by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(
            f"{name}|{str(data.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode()
        )
        if data.numel():
            digest.update(data.view(torch.uint8).numpy())  # the buffer itself, no copy
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------------------- writing
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp's 0600 would make shared artifacts unreadable
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_artifact(folder: str | Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> Path:
    """Write an artifact folder: the weights first, then the config that names their hash.

    Each file is replaced atomically; the config records the SHA-256 of the weights file, so a
    reader notices a pair that an interrupted save left mismatched.
    """
    folder = Path(folder)
    encodings = {r["name"]: r["encoding"] for r in config.get("modules", [])}
    # One metadata key: safetensors does not keep the order of several, and the file's bytes
    # (hence its hash and Hub commits) must not change between two saves of the same adapter.
    metadata = {
        "pb_adapters": json.dumps(
            {"format_version": FORMAT_VERSION, "encodings": encodings}, sort_keys=True
        )
    }
    payload = safetensors_save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata
    )
    config = dict(config)
    config["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    atomic_write_bytes(folder / ARTIFACT_WEIGHTS_NAME, payload)
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(folder / ARTIFACT_CONFIG_NAME, text.encode("utf-8"))
    return folder


# ---------------------------------------------------------------------------- reading
def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ArtifactError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_modules(modules: Any) -> None:
    _expect(isinstance(modules, list), "'modules' must be a list of module records")
    names: set[str] = set()
    for index, record in enumerate(modules):
        where = f"modules[{index}]"
        _expect(isinstance(record, dict), f"{where} must be an object")
        name = record.get("name")
        _expect(isinstance(name, str) and name != "", f"{where}.name must be a non-empty string")
        _expect(name not in names, f"module {name!r} is listed twice")
        names.add(name)
        shape = record.get("shape")
        _expect(
            isinstance(shape, list)
            and 0 < len(shape) <= 8
            and all(_is_int(d) and d >= 0 for d in shape),
            f"module {name!r}: 'shape' must be a list of non-negative integers",
        )
        numel = record.get("numel")
        _expect(
            _is_int(numel) and numel == math.prod(shape),
            f"module {name!r}: 'numel' does not match its shape",
        )
        _expect(
            isinstance(record.get("encoding"), str), f"module {name!r}: 'encoding' must be a string"
        )
        _expect(isinstance(record.get("type"), str), f"module {name!r}: 'type' must be a string")


def _validate_saved_modules(records: Any) -> None:
    _expect(isinstance(records, list), "'saved_modules' must be a list")
    for index, record in enumerate(records):
        where = f"saved_modules[{index}]"
        _expect(isinstance(record, dict), f"{where} must be an object")
        _expect(
            isinstance(record.get("path"), str) and record["path"] != "",
            f"{where}.path must be a string",
        )
        _expect(
            record.get("kind") in ("head", "norm", "module"),
            f"{where}.kind must be head, norm or module",
        )
        _expect(isinstance(record.get("type"), str), f"{where}.type must be a string")
        tensors = record.get("tensors")
        _expect(isinstance(tensors, dict), f"{where}.tensors must be an object")
        for key, shape in tensors.items():
            _expect(
                isinstance(key, str)
                and isinstance(shape, list)
                and all(_is_int(d) and d >= 0 for d in shape),
                f"{where}.tensors[{key!r}] must be a list of non-negative integers",
            )


def _validate_tasks(data: dict[str, Any]) -> None:
    """The extra tasks of an artifact that stores several (methods with shared layer state)."""
    from .model import validate_adapter_name  # local: the model imports this module

    tasks = data.get("tasks")
    if tasks is None:
        return
    _expect(isinstance(tasks, list), "'tasks' must be a list of task records")
    names = [data.get("task_name")]
    for index, record in enumerate(tasks):
        where = f"tasks[{index}]"
        _expect(isinstance(record, dict), f"{where} must be an object")
        try:
            names.append(validate_adapter_name(record.get("name")))
        except ValueError as err:
            raise ArtifactError(f"{where}.name: {err}") from None
        _expect(isinstance(record.get("config"), dict), f"{where}.config must be an object")
        _expect(
            record["config"].get("method") == data["method"],
            f"{where}.config.method differs from 'method'",
        )
        _expect(isinstance(record.get("head"), dict), f"{where}.head must be an object")
        _expect(isinstance(record["head"].get("paths"), list), f"{where}.head.paths must be a list")
        _validate_saved_modules(record.get("saved_modules", []))
        record.setdefault("saved_modules", [])
        _expect(
            record.get("metrics") is None or isinstance(record["metrics"], dict),
            f"{where}.metrics must be an object",
        )
    _expect(len(set(names)) == len(names), f"'tasks' names a task twice: {names}")


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """Read and validate ``adapter_config.json`` in ``folder``.

    Raises:
        ArtifactError: the file is missing, not JSON, or a field has the wrong type or value.
        FormatVersionError: the artifact uses a format version this release cannot read.
    """
    path = Path(folder) / ARTIFACT_CONFIG_NAME
    if not path.is_file():
        raise ArtifactError(
            f"no {ARTIFACT_CONFIG_NAME} in {folder}: is this a pb-adapters artifact folder?"
        )
    _expect(path.stat().st_size <= _MAX_CONFIG_BYTES, f"{path} is implausibly large")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    _expect(isinstance(data, dict), f"{path} must hold a JSON object")

    version = data.get("format_version")
    _expect(_is_int(version), f"{path}: 'format_version' must be an integer, got {version!r}")
    if version != FORMAT_VERSION:
        hint = (
            "upgrade pb-adapters (pip install -U pb-adapters)"
            if version > FORMAT_VERSION
            else "re-save it"
        )
        raise FormatVersionError(
            f"{path} uses artifact format version {version}; this release reads version "
            f"{FORMAT_VERSION}: {hint}"
        )
    _expect(isinstance(data.get("method"), str), "'method' must be a string")
    _expect(isinstance(data.get("config"), dict), "'config' must be an object")
    _expect(data["config"].get("method") == data["method"], "'config.method' differs from 'method'")
    base = data.get("base_model")
    _expect(isinstance(base, dict), "'base_model' must be an object")
    fingerprint = base.get("fingerprint")
    _expect(
        isinstance(fingerprint, str) and fingerprint.startswith("sha256:"),
        "'base_model.fingerprint' must be a 'sha256:...' string",
    )
    for key in ("name_or_path", "revision", "library", "architecture"):
        _expect(
            base.get(key) is None or isinstance(base.get(key), str),
            f"'base_model.{key}' must be a string",
        )
    _validate_modules(data.get("modules"))
    _validate_saved_modules(data.get("saved_modules", []))
    _expect(
        data.get("task_name") is None or isinstance(data["task_name"], str),
        "'task_name' must be a string",
    )
    _validate_tasks(data)
    head = data.get("head")
    _expect(isinstance(head, dict), "'head' must be an object")
    paths = head.get("paths")
    _expect(
        isinstance(paths, list) and all(isinstance(p, str) for p in paths),
        "'head.paths' must be a list",
    )
    _expect(isinstance(data.get("weights_sha256"), str), "'weights_sha256' must be a string")
    for key in ("metrics",):
        _expect(data.get(key) is None or isinstance(data[key], dict), f"'{key}' must be an object")
    _expect(
        data.get("datasets") is None
        or (
            isinstance(data["datasets"], list) and all(isinstance(d, str) for d in data["datasets"])
        ),
        "'datasets' must be a list of strings",
    )
    return data


# safetensors' dtype codes for the dtypes an artifact may hold.
_DTYPES = {
    "U8": torch.uint8,
    "I8": torch.int8,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
}


def read_adapter_tensors(
    folder: str | Path,
    expected: dict[str, tuple[torch.dtype | None, tuple[int, ...]]],
    weights_sha256: str,
) -> dict[str, Tensor]:
    """Read ``adapter_model.safetensors`` after checking it holds exactly the ``expected`` tensors.

    ``expected`` maps each key to ``(dtype, shape)``; a dtype of ``None`` accepts any floating
    dtype. The file's hash must equal ``weights_sha256`` (recorded in the config), its header
    must list exactly the expected keys with those dtypes and shapes, and only then is any tensor
    data read.
    """
    path = Path(folder) / ARTIFACT_WEIGHTS_NAME
    if not path.is_file():
        raise ArtifactError(f"no {ARTIFACT_WEIGHTS_NAME} in {folder}; the artifact is incomplete")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != weights_sha256:
        raise ArtifactError(
            f"{path} does not match the hash recorded in {ARTIFACT_CONFIG_NAME}: the file is corrupt "
            "or belongs to another save (was a save interrupted?); save or download it again"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            missing = sorted(set(expected) - keys)
            extra = sorted(keys - set(expected))
            _expect(
                not missing,
                f"{path} lacks tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}",
            )
            _expect(
                not extra,
                f"{path} holds unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}",
            )
            for key, (dtype, shape) in expected.items():
                info = handle.get_slice(key)
                found_dtype = _DTYPES.get(info.get_dtype())
                found_shape = tuple(info.get_shape())
                _expect(
                    found_shape == tuple(shape),
                    f"tensor {key!r} has shape {list(found_shape)}, expected {list(shape)}",
                )
                if dtype is None:
                    _expect(
                        found_dtype is not None and found_dtype.is_floating_point,
                        f"tensor {key!r} must be floating point, got {info.get_dtype()}",
                    )
                else:
                    _expect(
                        found_dtype == dtype,
                        f"tensor {key!r} has dtype {info.get_dtype()}, expected {dtype}",
                    )
            return {key: handle.get_tensor(key) for key in expected}
    except SafetensorError as err:
        raise ArtifactError(f"{path} is not a valid safetensors file: {err}") from None
