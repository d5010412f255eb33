"""What an artifact says about itself: :class:`AdapterSummary`, read from ``adapter_config.json``
(and the header of its weights file, when present, for exact sizes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..mask_coding import order0_entropy_bits
from ..registry import MethodSpec, get_method
from ..serialization import BASE_WEIGHTS
from ..utils.names import TIMM_HUB_PREFIXES, normalize_base_name
from .sizes import stored_bytes
from .values import int_or_none, numeric_metrics

_REPO_ID_RE = re.compile(r"^(?![.-])[A-Za-z0-9._-]{1,96}/(?![.-])[A-Za-z0-9._-]{1,96}$")
_SCALAR_TYPES = (str, int, float, bool)

# What the task learned when the artifact names a method this installation does not know.
_DEFAULT_DESCRIPTION = "a learned mask over the frozen base weights"

# Config entries the card shows elsewhere, or too long for its hyperparameter table.
_NOT_HYPERPARAMETERS = {
    "method",
    "id2label",
    "label2id",
    "num_labels",
    "target_modules",
    "exclude_modules",
    "base_model_name_or_path",
    "base_model_revision",
}


def method_spec(method: str | None) -> MethodSpec | None:
    """The registry entry of ``method``; ``None`` for a method this installation does not know."""
    try:
        return get_method(method) if isinstance(method, str) else None
    except ConfigError:
        return None


@dataclass(frozen=True)
class AdapterSummary:
    """What an artifact is and costs, in numbers a card or ``pb-adapters info`` can print.

    Sizes are exact when the weights file was available (read from its header), otherwise
    estimated from the recorded encodings; ``None`` means unknown.
    """

    method: str
    format_version: int | None
    library_version: str | None
    base_name: str | None
    base_revision: str | None
    base_library: str | None
    base_architecture: str | None
    base_fingerprint: str | None
    base_num_parameters: int | None
    num_labels: int | None
    labels: list[str]
    num_masked_modules: int
    masked_weights: int
    mask_bytes: int | None
    module_bytes: int | None
    weights_file_bytes: int | None
    zeros: int | None
    per_layer_sparsity: dict[str, float] = field(default_factory=dict)
    entropy_bits: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    mask_entries: int | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    base_weights: str | None = None
    base_checkpoint: str | None = None

    @property
    def bits_per_masked_weight(self) -> float | None:
        """Mask storage divided by the number of masked base weights."""
        if self.mask_bytes is None or not self.masked_weights:
            return None
        return 8 * self.mask_bytes / self.masked_weights

    @property
    def entropy_bits_per_masked_weight(self) -> float | None:
        """The masks' empirical order-0 entropy (zero versus nonzero, per layer) per weight."""
        if self.entropy_bits is None or not self.masked_weights:
            return None
        return self.entropy_bits / self.masked_weights

    @property
    def sparsity(self) -> float | None:
        """Fraction of mask entries switched off (mask value 0), over all masked layers.

        An entry is one weight for per-weight methods (piggyback) and one kernel for KSM.
        """
        entries = self.mask_entries or self.masked_weights
        if self.zeros is None or not entries:
            return None
        return self.zeros / entries

    @property
    def description(self) -> str:
        """What the adapter learned, in words (depends on the method)."""
        spec = method_spec(self.method)
        return spec.description if spec is not None else _DEFAULT_DESCRIPTION

    @property
    def hub_base_model(self) -> str | None:
        """The base model as a Hub repo id (``hf-hub:`` prefix and ``@revision`` removed); None
        unless the base is a Hub checkpoint whose weights the adapter was trained on, unchanged
        (``base_weights == "pretrained"``)."""
        if self.base_weights != "pretrained":
            return None
        name = normalize_base_name(self.base_name or "").removeprefix(TIMM_HUB_PREFIXES[0])
        return name if _REPO_ID_RE.fullmatch(name) else None

    @property
    def base_weights_text(self) -> str:
        """What the base's weights were, in words, for the card and ``pb-adapters info``."""
        checkpoint = f"`{self.base_checkpoint}`" if self.base_checkpoint else "a checkpoint"
        if self.base_weights == "pretrained":
            return "pretrained: exactly the weights of the checkpoint named above"
        if self.base_weights == "random":
            return "randomly initialised: no pretrained weights"
        if self.base_weights == "modified":
            return f"changed locally from {checkpoint}"
        if self.base_weights == "unknown":
            said = f" (said to be {checkpoint})" if self.base_checkpoint else ""
            return f"of unverified origin{said}"
        return "not recorded (an artifact written before pb-adapters recorded it)"


@dataclass
class _MaskCounts:
    """Switched-off mask entries, as the module records count them; ``zeros`` and ``entropy``
    are ``None`` unless every record has its counts."""

    zeros: int | None = 0
    entropy: float | None = 0.0
    entries: int = 0
    per_layer: dict[str, float] = field(default_factory=dict)


def _mask_counts(modules: list[dict[str, Any]]) -> _MaskCounts:
    """Total and per-layer switched-off entries, and the masks' order-0 entropy."""
    counts = _MaskCounts()
    for record in modules:
        count = int_or_none(record.get("zeros"))
        entries = int_or_none(record.get("entries")) or int_or_none(record.get("numel"))
        if count is None or not entries:
            counts.zeros = counts.entropy = None
            continue
        counts.per_layer[str(record.get("name"))] = count / entries
        counts.entries += entries
        if counts.zeros is not None and counts.entropy is not None:
            counts.zeros += count
            counts.entropy += order0_entropy_bits(count, entries)
    if not modules:
        counts.zeros = counts.entropy = None
    return counts


def _labels(adapter_config: dict[str, Any]) -> tuple[list[str], int | None]:
    """The class names in id order, and the number of classes (``None`` when unknown)."""
    id2label = adapter_config.get("id2label") or {}
    labels: list[str] = []
    if isinstance(id2label, dict):
        try:
            ordered = sorted(id2label.items(), key=lambda kv: int(kv[0]))
        except (TypeError, ValueError):
            ordered = sorted(id2label.items(), key=lambda kv: str(kv[0]))
        labels = [str(v) for _, v in ordered]
    head = adapter_config.get("head") or {}
    return labels, int_or_none(head.get("num_labels")) or (len(labels) or None)


def _hyperparameters(adapter_config: dict[str, Any]) -> dict[str, Any]:
    """The config's scalar entries that the card does not show elsewhere."""
    config = adapter_config.get("config") or {}
    return {
        k: v
        for k, v in config.items()
        if k not in _NOT_HYPERPARAMETERS and isinstance(v, _SCALAR_TYPES)
    }


def _evaluations(entries: Any) -> list[dict[str, Any]]:
    """The well-formed ``metrics.evaluations`` entries (``pb-adapters evaluate`` results), each
    ``{"dataset", "split", "num_samples", "metrics"}`` with numeric metrics only."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            continue
        if not isinstance(entry.get("dataset"), str) or not isinstance(entry.get("split"), str):
            continue
        out.append(
            {
                "dataset": entry["dataset"],
                "split": entry["split"],
                "num_samples": int_or_none(entry.get("num_samples")),
                "metrics": numeric_metrics(entry["metrics"]),
            }
        )
    return out


def _results(
    adapter_config: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Training's metrics, the ``pb-adapters evaluate`` results, and the datasets they are on."""
    metrics = dict(adapter_config.get("metrics") or {})
    evaluations = _evaluations(metrics.pop("evaluations", None))
    datasets = [str(d) for d in adapter_config.get("datasets") or []]
    if not datasets and isinstance(metrics.get("dataset"), str):
        datasets = [metrics["dataset"]]
    return metrics, evaluations, datasets


def _task_rows(adapter_config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task of an artifact that stores several (oldest first); else none."""
    records = adapter_config.get("tasks")
    if not isinstance(records, list):
        return []
    rows = []
    for record in [*records, adapter_config]:
        if not isinstance(record, dict):
            continue
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        head = record.get("head") if isinstance(record.get("head"), dict) else {}
        metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
        rows.append(
            {
                "name": record.get("name") or adapter_config.get("task_name") or "?",
                "index": config.get("task_index"),
                "num_labels": head.get("num_labels"),
                "datasets": [str(d) for d in record.get("datasets") or []],
                "metrics": numeric_metrics(metrics),
            }
        )
    return rows


def _base_fields(base: dict[str, Any]) -> dict[str, Any]:
    """The :class:`AdapterSummary` fields of the config's ``base_model`` record."""
    return {
        "base_name": base.get("name_or_path"),
        "base_revision": base.get("revision"),
        "base_library": base.get("library"),
        "base_architecture": base.get("architecture"),
        "base_fingerprint": base.get("fingerprint"),
        "base_num_parameters": int_or_none(base.get("num_parameters")),
        "base_weights": base.get("weights") if base.get("weights") in BASE_WEIGHTS else None,
        "base_checkpoint": base.get("checkpoint"),
    }


def summarize_adapter(
    adapter_config: dict[str, Any],
    weights_path: str | Path | None = None,
    *,
    weights: bytes | None = None,
) -> AdapterSummary:
    """Summarise an ``adapter_config.json`` dict (and its weights file, if given and present:
    a path, or the file's bytes as ``weights``)."""
    base = adapter_config.get("base_model") or {}
    modules = [m for m in adapter_config.get("modules") or [] if isinstance(m, dict)]
    masked = sum(int(m.get("numel", 0)) for m in modules)
    counts = _mask_counts(modules)
    mask_bytes, module_bytes, file_bytes = stored_bytes(
        adapter_config, modules, weights_path, weights
    )
    labels, num_labels = _labels(adapter_config)
    hyper = _hyperparameters(adapter_config)
    metrics, evaluations, datasets = _results(adapter_config)
    return AdapterSummary(
        method=str(adapter_config.get("method", "unknown")),
        format_version=int_or_none(adapter_config.get("format_version")),
        library_version=adapter_config.get("library_version"),
        **_base_fields(base),
        num_labels=num_labels,
        labels=labels,
        num_masked_modules=len(modules),
        masked_weights=masked,
        mask_bytes=mask_bytes,
        module_bytes=module_bytes,
        weights_file_bytes=file_bytes,
        zeros=counts.zeros,
        per_layer_sparsity=counts.per_layer,
        entropy_bits=counts.entropy,
        mask_entries=counts.entries if counts.zeros is not None else None,
        metrics=dict(metrics) if isinstance(metrics, dict) else {},
        datasets=datasets,
        hyperparameters=hyper,
        tasks=_task_rows(adapter_config),
        evaluations=evaluations,
    )
