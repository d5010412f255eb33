"""The artifact format: base fingerprints, and safe reading and writing.

An artifact is a folder with ``adapter_config.json`` (what the adapter is and what it applies to)
and ``adapter_model.safetensors`` (masks bit-packed as ``uint8`` or entropy-coded, head and norm
weights). Nothing is ever pickled. Readers validate everything they are given before anything
else looks at it, and writers replace files atomically so that a crash mid-save leaves the
previous artifact intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors import deserialize as safetensors_deserialize
from safetensors.torch import save as safetensors_save
from torch import Tensor

from .config import MAX_NUM_LABELS, AdapterConfig
from .errors import (
    ArtifactError,
    ConfigError,
    FormatVersionError,
    StorageError,
    TargetExistsError,
)
from .mask_coding import (
    DEFAULT_MASK_ENCODING,
    check_tensor_encodings,
    decode_bit_planes,
    encode_bit_planes,
)
from .registry import get_method
from .utils.files import discard, folder_lock, fsync_path, remove_leftovers, replace_files
from .utils.names import validate_adapter_name

__all__ = [
    "ARTIFACT_CONFIG_NAME",
    "ARTIFACT_WEIGHTS_NAME",
    "BASE_WEIGHTS",
    "FORMAT_VERSION",
    "MAX_CONFIG_BYTES",
    "SUPPORTED_FORMAT_VERSIONS",
    "build_artifact",
    "commit_artifact",
    "config_bytes",
    "declared_weights_limit",
    "fingerprint_tensors",
    "prepare_folder",
    "read_adapter_config",
    "read_adapter_tensors",
    "read_artifact_files",
    "storage_error",
    "weights_size_limit",
    "write_artifact",
]

ARTIFACT_CONFIG_NAME = "adapter_config.json"
ARTIFACT_WEIGHTS_NAME = "adapter_model.safetensors"
#: The newest artifact format: 2 adds entropy-coded bit planes (``tensor_encodings``). An artifact
#: whose planes are all bit-packed is written as version 1, which older releases read too.
FORMAT_VERSION = 2
#: Every format version this release reads.
SUPPORTED_FORMAT_VERSIONS = (1, 2)
#: What ``base_model.weights`` may say about the base's weights (see :mod:`pb_adapters.provenance`).
#: An optional field: older artifacts lack it, and older releases ignore it.
BASE_WEIGHTS = ("pretrained", "modified", "random", "unknown")

#: The largest ``adapter_config.json`` read or written. A config of thousands of modules and 21k
#: labels is a few MiB; parsing JSON costs at most ~30x its size in memory, so this also bounds
#: what a hostile config can allocate.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# Room for the safetensors header (names, dtypes, shapes, offsets, our metadata) beyond the
# tensor bytes the config implies: a weights file larger than that is refused before reading.
_HEADER_ALLOWANCE = 1024 * 1024
_HEADER_BYTES_PER_TENSOR = 4096
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Tasks of one artifact (methods whose tasks share layers index them in one byte).
_MAX_TASKS = 256


# ---------------------------------------------------------------------------- fingerprints
def fingerprint_tensors(items: Iterable[tuple[str, Tensor]]) -> str:
    """A SHA-256 over names, dtypes, shapes and exact bytes of ``items`` (sorted by name).

    The base model's fingerprint hashes :func:`pb_adapters.targeting.iter_base_tensors`.
    """
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
def _backup_path(folder: Path, weights_sha256: str) -> Path:
    """Where the weights named by ``weights_sha256`` are kept while a save replaces them."""
    return folder / f".{ARTIFACT_WEIGHTS_NAME}.{weights_sha256[:16]}.prev"


def _recorded_weights_hash(folder: Path) -> str | None:
    """The weights hash the folder's current config records, or ``None`` if there is none."""
    path = folder / ARTIFACT_CONFIG_NAME
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return value if isinstance(value, str) and _SHA256_HEX.fullmatch(value) else None


def _keep_previous_weights(folder: Path, new_sha256: str) -> Path | None:
    """Hard-link the current weights under a name derived from the hash the old config records;
    return the new link (``None`` when none was made).

    Between the two renames of a save, the folder holds the new weights and the old config; the
    reader then finds the old weights under this name, so the previous artifact stays loadable
    at every instant of a save.
    """
    old = _recorded_weights_hash(folder)
    weights = folder / ARTIFACT_WEIGHTS_NAME
    if old is None or old == new_sha256 or not weights.is_file():
        return None
    backup = _backup_path(folder, old)
    if backup.is_file():
        # Left by a save killed after replacing the weights: it holds the weights the config
        # records, which the folder's weights file no longer does.
        return None
    tmp = backup.with_name(f"{backup.name}.{os.getpid()}.tmp")
    discard(tmp)
    try:
        try:
            os.link(weights, tmp)
        except OSError:  # no hard links on this file system: copy instead
            shutil.copyfile(weights, tmp)
        os.replace(tmp, backup)
    except BaseException:
        discard(tmp)
        raise
    return backup


def build_artifact(
    config: dict[str, Any],
    tensors: dict[str, Tensor],
    *,
    bit_planes: Iterable[str] = (),
    mask_encoding: str = DEFAULT_MASK_ENCODING,
) -> tuple[dict[str, Any], bytes]:
    """The artifact's final config and the bytes of its weights file; writes nothing.

    The tensors named in ``bit_planes`` (packed ``uint8`` masks) are entropy-coded where that is
    smaller unless ``mask_encoding="bitpack"``; the coded ones are listed in the config's
    ``tensor_encodings``, and the format version is 2 when there are any, else 1 (readable by
    older releases). The config records the SHA-256 of the weights.
    """
    tensors, coded = encode_bit_planes(tensors, list(bit_planes), mask_encoding)
    version = FORMAT_VERSION if coded else 1
    encodings = {r["name"]: r["encoding"] for r in config.get("modules", [])}
    header: dict[str, Any] = {"format_version": version, "encodings": encodings}
    if coded:
        header["tensor_encodings"] = coded
    # One metadata key: safetensors does not keep the order of several, and the file's bytes
    # (hence its hash and Hub commits) must not change between two saves of the same adapter.
    metadata = {"pb_adapters": json.dumps(header, sort_keys=True)}
    payload = safetensors_save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata
    )
    config = {"format_version": version} | {
        k: v for k, v in config.items() if k not in ("format_version", "tensor_encodings")
    }
    if coded:
        config["tensor_encodings"] = coded
    config["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    return config, payload


def config_bytes(config: dict[str, Any]) -> bytes:
    """``adapter_config.json``'s bytes for the final ``config`` of :func:`build_artifact`."""
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def storage_error(err: OSError, action: str) -> StorageError:
    """A :class:`~pb_adapters.errors.StorageError` for ``err``, raised while doing ``action``."""
    cls = (
        TargetExistsError
        if isinstance(err, (FileExistsError, NotADirectoryError))
        else StorageError
    )
    reason = err.strerror or str(err) or type(err).__name__
    return cls(err.errno, f"cannot {action}: {reason}", err.filename)


def prepare_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) unless it exists; refuse a path that is not a folder."""
    try:
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(errno.EEXIST, "it exists and is not a folder", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(err, f"write the artifact folder {folder}") from None


def commit_artifact(
    folder: str | Path,
    config: dict[str, Any],
    payload: bytes,
    extra_files: Mapping[str, bytes | None] | None = None,
) -> Path:
    """Write what :func:`build_artifact` made into ``folder``, with ``extra_files`` (the card:
    ``{name: bytes}``, ``None`` to delete a file), all together or not at all.

    Holds the folder's exclusive lock (:func:`~pb_adapters.utils.files.folder_lock`), so that
    concurrent saves into one folder run one after the other and readers never see a save half
    done. Every file is first written and flushed under a temporary name, then the files are
    renamed into place (weights, config, then the others); an error at any step (a full disk)
    leaves the folder as it was and raises :class:`~pb_adapters.errors.StorageError`. While the
    pair is replaced the previous weights stay reachable (see :func:`read_adapter_tensors`), so a
    process killed at any point leaves either the previous or the new artifact loadable.
    """
    folder = Path(folder)
    text = config_bytes(config)
    _expect(
        len(text) <= MAX_CONFIG_BYTES,
        f"the adapter config would take {len(text)} bytes, more than the {MAX_CONFIG_BYTES} a "
        "reader accepts: record fewer labels or metrics",
    )
    prepare_folder(folder)
    files: dict[str, bytes | None] = {
        ARTIFACT_WEIGHTS_NAME: payload,
        ARTIFACT_CONFIG_NAME: text,
        **(extra_files or {}),
    }
    try:
        with folder_lock(folder):
            remove_leftovers(folder, list(files))
            backup = _keep_previous_weights(folder, config["weights_sha256"])
            try:
                replace_files(folder, files)
            except BaseException:
                if backup is not None:
                    discard(backup)
                raise
            for stale in folder.glob(f".{ARTIFACT_WEIGHTS_NAME}.*.prev"):
                discard(stale)
            fsync_path(folder)
    except OSError as err:
        raise storage_error(err, f"save the artifact in {folder}") from None
    return folder


def write_artifact(
    folder: str | Path,
    config: dict[str, Any],
    tensors: dict[str, Tensor],
    *,
    bit_planes: Iterable[str] = (),
    mask_encoding: str = DEFAULT_MASK_ENCODING,
) -> Path:
    """Write an artifact folder: :func:`build_artifact`, then :func:`commit_artifact`.

    Raises:
        StorageError: the folder could not be written (it is left as it was).
        TargetExistsError: ``folder`` is a file, or lies below one.
    """
    final, payload = build_artifact(
        config, tensors, bit_planes=bit_planes, mask_encoding=mask_encoding
    )
    return commit_artifact(folder, final, payload)


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


def _validate_labels(data: dict[str, Any]) -> None:
    head = data["head"]
    num_labels = head.get("num_labels")
    _expect(
        num_labels is None or (_is_int(num_labels) and 0 < num_labels <= MAX_NUM_LABELS),
        f"'head.num_labels' must be an integer from 1 to {MAX_NUM_LABELS}",
    )
    id2label = data.get("id2label")
    if id2label is not None:
        _expect(
            isinstance(id2label, dict)
            and all(isinstance(v, str) for v in id2label.values())
            and sorted(id2label) == sorted(str(i) for i in range(len(id2label))),
            "'id2label' must map '0' .. 'N-1' to strings",
        )
        _expect(
            num_labels is None or num_labels == len(id2label),
            f"'id2label' has {len(id2label)} entries but 'head.num_labels' is {num_labels}",
        )
    classes = num_labels if num_labels is not None else len(id2label or {}) or MAX_NUM_LABELS
    label2id = data.get("label2id")
    _expect(
        label2id is None
        or (
            isinstance(label2id, dict)
            and all(_is_int(v) and 0 <= v < classes for v in label2id.values())
        ),
        f"'label2id' must map strings to class indices below {classes}",
    )


def _validate_tasks(data: dict[str, Any]) -> None:
    """The extra tasks of an artifact that stores several (methods with shared layer state)."""

    tasks = data.get("tasks")
    if tasks is None:
        return
    _expect(isinstance(tasks, list), "'tasks' must be a list of task records")
    _expect(len(tasks) < _MAX_TASKS, f"'tasks' lists {len(tasks)} tasks; at most {_MAX_TASKS - 1}")
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
        try:
            _validate_labels(record)
        except ArtifactError as err:
            raise ArtifactError(f"{where}: {err}") from None
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
    try:
        if not path.is_file():
            raise ArtifactError(
                f"no {ARTIFACT_CONFIG_NAME} in {folder}: is this a pb-adapters artifact folder?"
            )
        _expect(path.stat().st_size <= MAX_CONFIG_BYTES, f"{path} is implausibly large")
        text = path.read_bytes()
    except OSError as err:
        raise storage_error(err, f"read {path}") from None
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ArtifactError(f"{path} nests JSON too deeply to be an adapter config") from None
    _expect(isinstance(data, dict), f"{path} must hold a JSON object")

    version = data.get("format_version")
    _expect(_is_int(version), f"{path}: 'format_version' must be an integer, got {version!r}")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        hint = (
            "upgrade pb-adapters (pip install -U pb-adapters)"
            if version > FORMAT_VERSION
            else "re-save it"
        )
        readable = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise FormatVersionError(
            f"{path} uses artifact format version {version}; this release reads versions "
            f"{readable}: {hint}"
        )
    check_tensor_encodings(data.get("tensor_encodings"), version)
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
    for key in ("name_or_path", "revision", "library", "architecture", "checkpoint"):
        _expect(
            base.get(key) is None or isinstance(base.get(key), str),
            f"'base_model.{key}' must be a string",
        )
    _expect(  # absent in artifacts written before it was recorded
        base.get("weights") is None or base["weights"] in BASE_WEIGHTS,
        f"'base_model.weights' must be one of {', '.join(BASE_WEIGHTS)}",
    )
    _validate_modules(data.get("modules"))
    data.setdefault("saved_modules", [])  # optional: the loader then finds the head missing
    _validate_saved_modules(data["saved_modules"])
    if data.get("task_name") is not None:
        try:
            validate_adapter_name(data["task_name"])
        except ValueError as err:
            raise ArtifactError(f"'task_name': {err}") from None
    _validate_tasks(data)
    head = data.get("head")
    _expect(isinstance(head, dict), "'head' must be an object")
    paths = head.get("paths")
    _expect(
        isinstance(paths, list) and all(isinstance(p, str) for p in paths),
        "'head.paths' must be a list",
    )
    _expect(
        isinstance(data.get("weights_sha256"), str)
        and _SHA256_HEX.fullmatch(data["weights_sha256"]),
        "'weights_sha256' must be 64 lowercase hex digits",
    )
    _validate_labels(data)
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


def weights_size_limit(expected: Mapping[str, tuple[torch.dtype | None, tuple[int, ...]]]) -> int:
    """The largest weights file that holds the ``expected`` tensors (``key: (dtype, shape)``;
    a dtype of ``None`` counts 8 bytes an entry), header included."""
    return _HEADER_ALLOWANCE + sum(
        _HEADER_BYTES_PER_TENSOR + math.prod(shape) * (8 if dtype is None else dtype.itemsize)
        for dtype, shape in expected.values()
    )


def declared_weights_limit(data: dict[str, Any]) -> int:
    """The largest weights file the validated config ``data`` (of :func:`read_adapter_config`)
    explains: the tensors its records declare, checked against nothing else.

    A loader knows better (it checks the records against the model first); this is the bound
    for a file that has no model yet (a download, ``pb-adapters info``, a push).
    """
    try:
        config = AdapterConfig.from_dict(data["config"])
        layer_class = get_method(config.method).layer_class
        expected: dict[str, tuple[torch.dtype | None, tuple[int, ...]]] = {}
        for record in data["modules"]:
            for key, item in layer_class.expected_tensors(tuple(record["shape"]), config).items():
                expected[f"layers.{record['name']}.{key}"] = item
    except (ConfigError, ArtifactError) as err:
        raise ArtifactError(f"invalid adapter config: {err}") from None
    tasks = [("modules.", data)] + [(f"tasks.{t['name']}.", t) for t in data.get("tasks") or []]
    for prefix, task in tasks:
        for saved in task["saved_modules"]:
            for key, shape in saved["tensors"].items():
                expected[f"{prefix}{saved['path']}.{key}"] = (None, tuple(shape))
    return weights_size_limit(expected)


def _read_weights(folder: Path, weights_sha256: str, limit: int) -> tuple[Path, bytes]:
    """The weights file's bytes, refused unread above ``limit`` bytes, whose hash must be
    ``weights_sha256`` (the file itself, or the copy a save keeps while it replaces it)."""
    path = folder / ARTIFACT_WEIGHTS_NAME
    try:
        if not path.is_file():
            raise ArtifactError(
                f"no {ARTIFACT_WEIGHTS_NAME} in {folder}; the artifact is incomplete"
            )
        for candidate in (path, _backup_path(folder, weights_sha256)):  # see commit_artifact
            if candidate.is_file() and candidate.stat().st_size <= limit:
                data = candidate.read_bytes()
                if hashlib.sha256(data).hexdigest() == weights_sha256:
                    return candidate, data
        size = path.stat().st_size
    except OSError as err:
        raise storage_error(err, f"read {path}") from None
    if size > limit:
        raise ArtifactError(
            f"{path} is {size} bytes, more than the {limit} bytes the tensors listed in "
            f"{ARTIFACT_CONFIG_NAME} can fill; the file is corrupt or not this adapter's"
        )
    raise ArtifactError(
        f"{path} does not match the hash recorded in {ARTIFACT_CONFIG_NAME}: the file is corrupt "
        "or belongs to another save (was a save interrupted?); save or download it again"
    )


def read_artifact_files(folder: str | Path) -> tuple[dict[str, Any], bytes, bytes]:
    """``(config, config bytes, weights bytes)`` of an artifact folder, read as one save's pair.

    Read under the folder's shared lock (a save running meanwhile is waited for). The config is
    validated; the weights must be no larger than the config's records explain
    (:func:`declared_weights_limit`), hash to what the config records and parse as safetensors.
    Nothing is checked against a model.

    Raises:
        ArtifactError: the files are missing, malformed or do not belong together.
        StorageError: a file could not be read.
    """
    folder = Path(folder)
    with folder_lock(folder, shared=True):
        data = read_adapter_config(folder)
        try:
            text = (folder / ARTIFACT_CONFIG_NAME).read_bytes()
        except OSError as err:
            raise storage_error(err, f"read {folder / ARTIFACT_CONFIG_NAME}") from None
        path, raw = _read_weights(folder, data["weights_sha256"], declared_weights_limit(data))
    try:
        safetensors_deserialize(raw)
    except SafetensorError as err:
        raise ArtifactError(f"{path} is not a valid safetensors file: {err}") from None
    return data, text, raw


def read_adapter_tensors(
    folder: str | Path,
    expected: dict[str, tuple[torch.dtype | None, tuple[int, ...]]],
    weights_sha256: str,
    tensor_encodings: dict[str, str] | None = None,
) -> dict[str, Tensor]:
    """Read ``adapter_model.safetensors`` after checking it holds exactly the ``expected`` tensors.

    ``expected`` maps each key to ``(dtype, shape)``; a dtype of ``None`` accepts any floating
    dtype. The file's hash must equal ``weights_sha256`` (recorded in the config), its header
    must list exactly the expected keys with those dtypes and shapes, and only then are tensors
    built. A file larger than the expected tensors can fill is refused before it is read.
    Tensors named in ``tensor_encodings`` (the config's field of that name) are entropy-coded
    bit planes: each must be a ``uint8`` stream shorter than the packed plane it stands for, and
    is returned decoded to exactly the expected packed tensor.
    """
    coded = tensor_encodings or {}
    for key in coded:
        dtype, shape = expected.get(key, (None, ()))
        _expect(
            dtype == torch.uint8 and len(shape) == 1,
            f"tensor {key!r} is recorded as entropy-coded but is not a packed bit plane here",
        )
    # The largest file the expected tensors can fill: anything bigger is refused unread.
    path, raw = _read_weights(Path(folder), weights_sha256, weights_size_limit(expected))
    # Parse the very bytes that were hashed: a save running meanwhile cannot swap the file.
    try:
        entries = dict(safetensors_deserialize(raw))
    except SafetensorError as err:
        raise ArtifactError(f"{path} is not a valid safetensors file: {err}") from None
    missing = sorted(set(expected) - set(entries))
    extra = sorted(set(entries) - set(expected))
    _expect(not missing, f"{path} lacks tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    _expect(
        not extra, f"{path} holds unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}"
    )
    tensors: dict[str, Tensor] = {}
    for key, (dtype, shape) in expected.items():
        entry = entries[key]
        found_dtype = _DTYPES.get(entry["dtype"])
        found_shape = tuple(entry["shape"])
        if key in coded:
            _expect(
                found_dtype == torch.uint8
                and len(found_shape) == 1
                and 0 < found_shape[0] < shape[0],
                f"coded tensor {key!r} must be a uint8 stream shorter than {shape[0]} "
                f"bytes, got {entry['dtype']} {list(found_shape)}",
            )
        else:
            _expect(
                found_shape == tuple(shape),
                f"tensor {key!r} has shape {list(found_shape)}, expected {list(shape)}",
            )
            if dtype is None:
                _expect(
                    found_dtype is not None and found_dtype.is_floating_point,
                    f"tensor {key!r} must be floating point, got {entry['dtype']}",
                )
            else:
                _expect(
                    found_dtype == dtype,
                    f"tensor {key!r} has dtype {entry['dtype']}, expected {dtype}",
                )
        data = entry["data"]
        if not data:  # frombuffer refuses empty buffers
            tensors[key] = torch.empty(found_shape, dtype=found_dtype)
            continue
        flat = torch.frombuffer(data, dtype=torch.uint8)  # safetensors stores little-endian
        tensors[key] = flat.view(found_dtype).reshape(found_shape).clone()
    try:
        return decode_bit_planes(tensors, coded, expected)
    except ArtifactError as err:
        raise ArtifactError(f"{path}: {err}") from None
