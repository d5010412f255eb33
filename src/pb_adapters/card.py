"""Model cards for adapter artifacts: ``README.md``, a sparsity plot and a small ``config.json``.

Everything is derived from ``adapter_config.json`` (and, when present, the header of
``adapter_model.safetensors`` for exact sizes), so a card can be rebuilt from any artifact folder.
The card's YAML metadata is made with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard`
so the Hub can index it (library, base model, task, datasets, evaluation results).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import struct
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base_registry import get_base, is_registered_base
from .errors import ConfigError
from .mask_coding import order0_entropy_bits
from .registry import MethodSpec, get_method
from .serialization import (
    ARTIFACT_WEIGHTS_NAME,
    BASE_WEIGHTS,
    prepare_folder,
    read_adapter_config,
    storage_error,
)
from .utils.files import atomic_write_bytes, folder_lock, remove_leftovers, replace_files
from .utils.names import TIMM_HUB_PREFIXES, normalize_base_name

__all__ = [
    "CARD_NAME",
    "HUB_CONFIG_NAME",
    "PLOT_NAME",
    "AdapterSummary",
    "build_model_card",
    "hub_config",
    "plot_mask_sparsity",
    "render_card_files",
    "summarize_adapter",
    "write_hub_config",
    "write_model_card",
]

CARD_NAME = "README.md"
PLOT_NAME = "mask_sparsity.png"
HUB_CONFIG_NAME = "config.json"
LIBRARY_NAME = "pb-adapters"

_REPO_ID_RE = re.compile(r"^(?![.-])[A-Za-z0-9._-]{1,96}/(?![.-])[A-Za-z0-9._-]{1,96}$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_MAX_LABELS_SHOWN = 50
_SCALAR_TYPES = (str, int, float, bool)

# What the task learned when the artifact names a method this installation does not know.
_DEFAULT_DESCRIPTION = "a learned mask over the frozen base weights"


def _method_spec(method: str | None) -> MethodSpec | None:
    """The registry entry of ``method``; ``None`` for a method this installation does not know."""
    try:
        return get_method(method) if isinstance(method, str) else None
    except ConfigError:
        return None


# ---------------------------------------------------------------------------- summary
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
        spec = _method_spec(self.method)
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
            and all(_int_or_none(o) is not None for o in offsets)
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


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
                "metrics": _numeric_metrics(metrics),
            }
        )
    return rows


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

    zeros: int | None = 0
    entropy: float | None = 0.0
    total_entries = 0
    per_layer: dict[str, float] = {}
    for record in modules:
        count = _int_or_none(record.get("zeros"))
        entries = _int_or_none(record.get("entries")) or _int_or_none(record.get("numel"))
        if count is None or not entries:
            zeros = entropy = None
            continue
        per_layer[str(record.get("name"))] = count / entries
        total_entries += entries
        if zeros is not None and entropy is not None:
            zeros += count
            entropy += order0_entropy_bits(count, entries)
    if not modules:
        zeros = entropy = None

    mask_bytes: int | None = None
    module_bytes: int | None = None
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
    if sizes is not None:
        mask_bytes = sum(v for k, v in sizes.items() if k.startswith("layers."))
        module_bytes = sum(v for k, v in sizes.items() if k.startswith("modules."))
    else:
        coded = adapter_config.get("tensor_encodings") or {}
        # Coded planes have no size without the file; packed ones follow from their shape.
        estimates = [
            None
            if any(str(key).startswith(f"layers.{m.get('name')}.") for key in coded)
            else _estimated_mask_bytes(m)
            for m in modules
        ]
        if estimates and all(e is not None for e in estimates):
            mask_bytes = sum(e for e in estimates if e is not None)

    id2label = adapter_config.get("id2label") or {}
    labels: list[str] = []
    if isinstance(id2label, dict):
        try:
            ordered = sorted(id2label.items(), key=lambda kv: int(kv[0]))
        except (TypeError, ValueError):
            ordered = sorted(id2label.items(), key=lambda kv: str(kv[0]))
        labels = [str(v) for _, v in ordered]
    head = adapter_config.get("head") or {}
    num_labels = _int_or_none(head.get("num_labels")) or (len(labels) or None)

    config = adapter_config.get("config") or {}
    # Shown elsewhere in the card, or too long for a table.
    skip = {
        "method",
        "id2label",
        "label2id",
        "num_labels",
        "target_modules",
        "exclude_modules",
        "base_model_name_or_path",
        "base_model_revision",
    }
    hyper = {k: v for k, v in config.items() if k not in skip and isinstance(v, _SCALAR_TYPES)}
    metrics = dict(adapter_config.get("metrics") or {})
    evaluations = _evaluations(metrics.pop("evaluations", None))
    datasets = [str(d) for d in adapter_config.get("datasets") or []]
    if not datasets and isinstance(metrics.get("dataset"), str):
        datasets = [metrics["dataset"]]
    return AdapterSummary(
        method=str(adapter_config.get("method", "unknown")),
        format_version=_int_or_none(adapter_config.get("format_version")),
        library_version=adapter_config.get("library_version"),
        base_name=base.get("name_or_path"),
        base_revision=base.get("revision"),
        base_library=base.get("library"),
        base_architecture=base.get("architecture"),
        base_fingerprint=base.get("fingerprint"),
        base_num_parameters=_int_or_none(base.get("num_parameters")),
        num_labels=num_labels,
        labels=labels,
        num_masked_modules=len(modules),
        masked_weights=masked,
        mask_bytes=mask_bytes,
        module_bytes=module_bytes,
        weights_file_bytes=file_bytes,
        zeros=zeros,
        per_layer_sparsity=per_layer,
        entropy_bits=entropy,
        mask_entries=total_entries if zeros is not None else None,
        base_weights=base.get("weights") if base.get("weights") in BASE_WEIGHTS else None,
        base_checkpoint=base.get("checkpoint"),
        metrics=dict(metrics) if isinstance(metrics, dict) else {},
        datasets=datasets,
        hyperparameters=hyper,
        tasks=_task_rows(adapter_config),
        evaluations=evaluations,
    )


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
                "num_samples": _int_or_none(entry.get("num_samples")),
                "metrics": _numeric_metrics(entry["metrics"]),
            }
        )
    return out


# ---------------------------------------------------------------------------- plot
def plot_mask_sparsity(summary: AdapterSummary, path: str | Path) -> Path | None:
    """Draw per-layer sparsity (percent of mask entries that are 0) as a PNG at ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change) and writes no
    timestamp or version metadata, so the same artifact always gives the same bytes. Returns
    ``None`` (and writes nothing) when the artifact records no per-layer counts.
    """
    png = _sparsity_png(summary)
    if png is None:
        return None
    path = Path(path)
    atomic_write_bytes(path, png)
    return path


def _sparsity_png(summary: AdapterSummary) -> bytes | None:
    """The PNG bytes of :func:`plot_mask_sparsity`; ``None`` without per-layer counts."""
    if not summary.per_layer_sparsity:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(summary.per_layer_sparsity)
    values = [100.0 * summary.per_layer_sparsity[n] for n in names]
    n = len(names)
    with_names = n <= 120
    height = min(max(2.5, 0.16 * n + 1.2), 24.0) if with_names else 4.0
    fig = Figure(figsize=(8.0, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if with_names:
        positions = list(range(n))
        ax.barh(positions, values, color="#3b75af", height=0.8)
        ax.set_yticks(positions)
        ax.set_yticklabels(names, fontsize=6 if n > 40 else 8)
        ax.invert_yaxis()
        ax.set_xlabel("masked-out weights (%)")
        ax.set_xlim(0, max(5.0, min(100.0, max(values) * 1.1 + 1)))
    else:
        ax.bar(range(n), values, color="#3b75af", width=1.0)
        ax.set_xlabel("masked layer (model order)")
        ax.set_ylabel("masked-out weights (%)")
        ax.set_ylim(0, max(5.0, min(100.0, max(values) * 1.1 + 1)))
    total = summary.sparsity
    title = f"Per-layer mask sparsity ({summary.method})"
    if total is not None:
        title += f", overall {100 * total:.1f}%"
        if with_names:
            ax.axvline(100 * total, color="#c44e52", linestyle="--", linewidth=1)
        else:
            ax.axhline(100 * total, color="#c44e52", linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x" if with_names else "y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------------------- card
def _cell(value: Any) -> str:
    """Make a value safe inside a Markdown table cell."""
    text = " ".join(str(value).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n:,} bytes ({value:.1f} {unit})"


def _split_metric(name: str) -> tuple[str, str | None]:
    """``test_accuracy`` -> (``accuracy``, ``test``); ``accuracy`` -> (``accuracy``, None)."""
    for prefix, split in (
        ("test_", "test"),
        ("eval_", "validation"),
        ("val_", "validation"),
        ("validation_", "validation"),
        ("train_", "train"),
    ):
        if name.startswith(prefix):
            return name[len(prefix) :], split
    return name, None


def _finite_float(value: Any) -> float | None:
    """``value`` as a finite float; ``None`` for other types, NaN, infinities and integers too
    large for a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    numbers = {str(k): _finite_float(v) for k, v in metrics.items()}
    return {k: v for k, v in numbers.items() if v is not None}


def _py(text: str) -> str:
    """A Python string literal (double quotes, escapes) for generated code."""
    return json.dumps(text)


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, width=94)]


def _pretrained_base(summary: AdapterSummary) -> tuple[list[str], list[str]] | None:
    """Import lines and code that create the base checkpoint (pretrained weights only)."""
    name = summary.base_name
    if summary.base_weights != "pretrained" or not name:
        return None
    if is_registered_base(name):  # a base known by name here, such as the offline demo backbone
        return get_base(name).usage()
    if summary.base_library == "timm":
        if summary.base_revision and name.startswith(TIMM_HUB_PREFIXES) and "@" not in name:
            name = f"{name}@{summary.base_revision}"  # timm names a Hub revision inside the id
        return ["import timm"], [f"base = timm.create_model({_py(name)}, pretrained=True)"]
    if summary.base_library == "transformers":
        revision = f", revision={_py(summary.base_revision)}" if summary.base_revision else ""
        return ["from transformers import AutoModelForImageClassification"], [
            f"base = AutoModelForImageClassification.from_pretrained({_py(name)}{revision})"
        ]
    return None


def _other_base(summary: AdapterSummary) -> tuple[list[str], list[str]]:
    """Import lines and code for a base that no checkpoint name creates: what the weights were,
    and the architecture (timm) or a placeholder to replace."""
    arch = summary.base_architecture or summary.base_name or "model"
    exact = "load the exact weights the adapter was trained on (their fingerprint is checked)"
    if summary.base_weights == "random":
        note = (
            f"The adapter was trained on a randomly initialised {arch}, not on pretrained "
            f"weights. A new random initialisation differs: {exact}."
        )
    elif summary.base_weights in ("modified", "unknown"):
        note = f"The adapter was trained on {arch} weights {summary.base_weights_text}: {exact}."
    elif summary.base_weights == "pretrained":  # a checkpoint no library here creates by name
        note = f"The adapter was trained on the weights of {summary.base_name}: {exact}."
    else:  # not recorded
        note = (
            f"This artifact does not record whether its base held the weights of "
            f"{summary.base_name or arch}: build the base it was trained on (its fingerprint is "
            "checked)."
        )
    if summary.base_library == "timm" and summary.base_weights in ("random", "modified", "unknown"):
        return ["import timm"], [
            *_comment(note),
            f"base = timm.create_model({_py(arch)}, pretrained=False)",
            "base.load_state_dict(...)",
        ]
    return [], [*_comment(note), "base = ..."]


def _usage(summary: AdapterSummary, repo_id: str | None, subfolder: str | None) -> str:
    if summary.base_library not in ("timm", "transformers") and summary.base_weights is None:
        imports: list[str] = []
        build = [
            "# Build the base model exactly as it was when the adapter was trained:",
            "# its weights are checked against the fingerprint below.",
            "base = ...",
        ]
    else:
        imports, build = _pretrained_base(summary) or _other_base(summary)
    target = _py(repo_id or "path/to/this/folder")
    extra = f", subfolder={_py(subfolder)}" if subfolder else ""
    call = (
        "model(pixel_values=images).logits"
        if summary.base_library == "transformers"
        else ("model(images)")
    )
    lines = [
        *imports,
        "from pb_adapters import PiggybackModel",
        "",
        *build,
        f"model = PiggybackModel.from_pretrained(base, {target}{extra})",
        "model.eval()",
        f"logits = {call}  # images: a normalised float batch, as for the base model",
    ]
    return "\n".join(lines)


def _metadata(summary: AdapterSummary, repo_id: str | None, subfolder: str | None) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    tags = [LIBRARY_NAME, summary.method]
    if summary.base_library in ("timm", "transformers"):
        tags.append(summary.base_library)
    tags += ["image-classification", "task-adapter"]
    base_model = summary.hub_base_model
    extra: dict[str, Any] = {}
    if base_model is not None:
        extra["base_model_relation"] = "adapter"

    eval_results = None
    metrics = _numeric_metrics(summary.metrics)
    model_name = (repo_id or "pb-adapters-task").split("/")[-1]
    if subfolder:
        model_name = f"{model_name}/{subfolder}"
    # (dataset, split, metric, value, name): the evaluations' results replace training's own
    results = [
        (e["dataset"], e["split"], key, value, key)
        for e in summary.evaluations
        for key, value in e["metrics"].items()
    ]
    if metrics and summary.datasets:
        covered = {(dataset, split, metric) for dataset, split, metric, _, _ in results}
        for key, value in metrics.items():
            metric, split = _split_metric(key)
            if (summary.datasets[0], split, metric) not in covered:
                results.append((summary.datasets[0], split, metric, value, key))
    if results:
        eval_results = []
        for dataset, split, metric, value, key in results:
            eval_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=split,
                    metric_type=metric,
                    metric_name=key,
                    metric_value=value,
                )
            )
    return ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=base_model,
        pipeline_tag="image-classification",
        tags=tags,
        datasets=summary.datasets or None,
        metrics=sorted({metric for _, _, metric, _, _ in results}) or None,
        eval_results=eval_results,
        model_name=model_name if eval_results else None,
        **extra,
    )


def _tasks_table(tasks: list[dict[str, Any]]) -> list[str]:
    names = sorted({k for task in tasks for k in task["metrics"]})
    out = [
        "",
        "## Tasks",
        "",
        f"{len(tasks)} tasks share this artifact's weights; task k uses the weights kept by tasks "
        "1 to k, so each task's results stay exactly as they were when it was added.",
        "",
        "| task | slot | classes | data |" + "".join(f" {_cell(n)} |" for n in names),
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for task in tasks:
        values = "".join(
            f" {task['metrics'][n]:.4f} |" if n in task["metrics"] else " |" for n in names
        )
        out.append(
            f"| {_cell(task['name'])} | {_cell(task['index'] or '')} | "
            f"{_cell(task['num_labels'] or '')} | {_cell(', '.join(task['datasets']))} |" + values
        )
    return out


def _evaluations_table(evaluations: list[dict[str, Any]]) -> list[str]:
    names = sorted({k for e in evaluations for k in e["metrics"]})
    out = [
        "",
        "## Evaluation with pb-adapters evaluate",
        "",
        "| dataset | split | images |" + "".join(f" {_cell(n)} |" for n in names),
        "|---|---|---|" + "---|" * len(names),
    ]
    for e in evaluations:
        values = "".join(f" {e['metrics'][n]:.4f} |" if n in e["metrics"] else " |" for n in names)
        images = "" if e["num_samples"] is None else f"{e['num_samples']:,}"
        out.append(f"| {_cell(e['dataset'])} | {_cell(e['split'])} | {images} |" + values)
    return out


def _body(
    summary: AdapterSummary,
    repo_id: str | None,
    subfolder: str | None,
    plot_name: str | None,
) -> str:
    title = (repo_id.split("/")[-1] if repo_id else "pb-adapters task") + (
        f" / {subfolder}" if subfolder else ""
    )
    base = summary.hub_base_model or summary.base_name or summary.base_architecture or "its base"
    base_link = (
        f"[`{base}`](https://huggingface.co/{base})" if summary.hub_base_model else f"`{base}`"
    )
    if summary.base_weights == "random":
        base_link += " (randomly initialised, not pretrained)"
    elif summary.base_weights in ("modified", "unknown"):
        base_link += f" (weights {summary.base_weights_text})"
    # Only a checkpoint has revisions; other bases are recorded under their architecture.
    revision = "unknown" if summary.base_weights in (None, "pretrained") else "none"
    bits = summary.bits_per_masked_weight
    cost = f" (about {bits:.2f} bits per masked weight)" if bits is not None else ""
    labels = f"a {summary.num_labels}-class head" if summary.num_labels else "a task head"
    out = [
        f"# {_cell(title)}",
        "",
        f"A **{summary.method}** task adapter made with pb-adapters for {base_link}: "
        f"{summary.description}{cost} plus {labels}. The base weights are never "
        "changed, so any number of such tasks can share one copy of the base model.",
        "",
        "## Usage",
        "",
        "```python",
        _usage(summary, repo_id, subfolder),
        "```",
        "",
        "Loading checks the format version, the layer shapes and the base model's fingerprint",
        "before anything is changed, and refuses a base with different weights.",
        "",
        "## Base model",
        "",
        "| | |",
        "|---|---|",
        f"| name | `{_cell(summary.base_name or 'unknown')}` |",
        f"| revision | `{_cell(summary.base_revision or revision)}` |",
        f"| weights | {_cell(summary.base_weights_text)} |",
        f"| library | {_cell(summary.base_library or 'unknown')} |",
        f"| architecture | `{_cell(summary.base_architecture or 'unknown')}` |",
        f"| fingerprint | `{_cell(summary.base_fingerprint or 'unknown')}` |",
    ]
    if summary.base_num_parameters is not None:
        out.append(f"| parameters | {summary.base_num_parameters:,} |")
    out += ["", "## Mask", "", "| | |", "|---|---|"]
    out.append(f"| method | {_cell(summary.method)} |")
    out.append(f"| masked layers | {summary.num_masked_modules:,} |")
    out.append(f"| masked weights | {summary.masked_weights:,} |")
    out.append(f"| mask size | {_fmt_bytes(summary.mask_bytes)} |")
    if bits is not None:
        out.append(f"| bits per masked weight | {bits:.3f} |")
    entropy = summary.entropy_bits_per_masked_weight
    if entropy is not None:
        out.append(f"| mask entropy (order 0) | {entropy:.3f} bits per masked weight |")
    if summary.module_bytes is not None:
        out.append(f"| head and other task weights | {_fmt_bytes(summary.module_bytes)} |")
    if summary.weights_file_bytes is not None:
        out.append(f"| `{ARTIFACT_WEIGHTS_NAME}` | {_fmt_bytes(summary.weights_file_bytes)} |")
    if summary.sparsity is not None:
        unit = (
            "masked weights"
            if summary.mask_entries in (None, summary.masked_weights)
            else "mask entries"
        )
        out.append(f"| overall sparsity | {100 * summary.sparsity:.2f}% of {unit} off |")
    if summary.format_version is not None:
        out.append(f"| artifact format | version {summary.format_version} |")
    if plot_name:
        out += ["", f"![Per-layer mask sparsity]({plot_name})"]
    if summary.hyperparameters:
        out += ["", "### Hyperparameters", "", "| name | value |", "|---|---|"]
        out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in summary.hyperparameters.items()]
    if summary.labels or summary.num_labels:
        count = summary.num_labels or len(summary.labels)
        out += ["", "## Labels", "", f"{count} classes."]
        if summary.labels:
            shown = summary.labels[:_MAX_LABELS_SHOWN]
            out += ["", "| id | label |", "|---|---|"]
            out += [f"| {i} | {_cell(label)} |" for i, label in enumerate(shown)]
            if len(summary.labels) > len(shown):
                out.append(f"| ... | {len(summary.labels) - len(shown)} more |")
    if summary.tasks:
        out += _tasks_table(summary.tasks)
    metrics = _numeric_metrics(summary.metrics)
    if metrics:
        on = f" on {', '.join(summary.datasets)}" if summary.datasets else ""
        out += ["", "## Evaluation", "", f"Results{on}.", "", "| metric | value |", "|---|---|"]
        out += [f"| {_cell(k)} | {v:.4f} |" for k, v in metrics.items()]
    if summary.evaluations:
        out += _evaluations_table(summary.evaluations)
    spec = _method_spec(summary.method)
    citation = spec.citation if spec is not None else None
    if citation:
        out += ["", "## Citation", "", "```bibtex", citation, "```"]
    return "\n".join(out) + "\n"


def build_model_card(
    adapter_config: dict[str, Any],
    repo_id: str | None = None,
    *,
    subfolder: str | None = None,
    weights_path: str | Path | None = None,
    plot_name: str | None = PLOT_NAME,
    weights: bytes | None = None,
) -> Any:
    """Build the model card (a ``huggingface_hub.ModelCard``) for an adapter config dict.

    ``repo_id`` and ``subfolder`` go into the usage snippet; ``plot_name`` is the image the card
    links to (``None`` for no image). The weights file (``weights_path``, or its bytes as
    ``weights``) gives exact sizes.
    """
    from huggingface_hub import ModelCard

    summary = summarize_adapter(adapter_config, weights_path, weights=weights)
    data = _metadata(summary, repo_id, subfolder)
    content = f"---\n{data.to_yaml()}\n---\n\n{_body(summary, repo_id, subfolder, plot_name)}"
    return ModelCard(content)


# ---------------------------------------------------------------------------- config.json
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
    png = _sparsity_png(summary)
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
