"""The model card itself: its YAML metadata (a ``huggingface_hub`` ``ModelCardData``, so the Hub
indexes library, base model, task, datasets and evaluation results) and its Markdown body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..serialization import ARTIFACT_WEIGHTS_NAME
from .names import LIBRARY_NAME, PLOT_NAME
from .summary import AdapterSummary, method_spec, summarize_adapter
from .usage import usage_snippet
from .values import numeric_metrics

_MAX_LABELS_SHOWN = 50

# A metric name's prefix and the dataset split it was measured on.
_SPLIT_PREFIXES = (
    ("test_", "test"),
    ("eval_", "validation"),
    ("val_", "validation"),
    ("validation_", "validation"),
    ("train_", "train"),
)

# One evaluation result of the metadata: (dataset, split, metric, value, metric name).
_Result = tuple[str, str | None, str, float, str]


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
    for prefix, split in _SPLIT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :], split
    return name, None


# ---------------------------------------------------------------------------- metadata
def _tags(summary: AdapterSummary) -> list[str]:
    tags = [LIBRARY_NAME, summary.method]
    if summary.base_library in ("timm", "transformers"):
        tags.append(summary.base_library)
    return [*tags, "image-classification", "task-adapter"]


def _results(summary: AdapterSummary) -> list[_Result]:
    """The card's evaluation results: ``pb-adapters evaluate``'s, then training's own metrics
    (on the first dataset) for what those do not cover."""
    results: list[_Result] = [
        (e["dataset"], e["split"], key, value, key)
        for e in summary.evaluations
        for key, value in e["metrics"].items()
    ]
    metrics = numeric_metrics(summary.metrics)
    if metrics and summary.datasets:
        covered = {(dataset, split, metric) for dataset, split, metric, _, _ in results}
        for key, value in metrics.items():
            metric, split = _split_metric(key)
            if (summary.datasets[0], split, metric) not in covered:
                results.append((summary.datasets[0], split, metric, value, key))
    return results


def _eval_results(results: list[_Result]) -> list[Any] | None:
    """``results`` as ``huggingface_hub`` ``EvalResult`` entries (``None`` when there are none)."""
    from huggingface_hub import EvalResult

    if not results:
        return None
    return [
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
        for dataset, split, metric, value, key in results
    ]


def _metadata(summary: AdapterSummary, repo_id: str | None, subfolder: str | None) -> Any:
    from huggingface_hub import ModelCardData

    base_model = summary.hub_base_model
    extra: dict[str, Any] = {}
    if base_model is not None:
        extra["base_model_relation"] = "adapter"
    model_name = (repo_id or "pb-adapters-task").split("/")[-1]
    if subfolder:
        model_name = f"{model_name}/{subfolder}"
    results = _results(summary)
    eval_results = _eval_results(results)
    return ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=base_model,
        pipeline_tag="image-classification",
        tags=_tags(summary),
        datasets=summary.datasets or None,
        metrics=sorted({metric for _, _, metric, _, _ in results}) or None,
        eval_results=eval_results,
        model_name=model_name if eval_results else None,
        **extra,
    )


# ---------------------------------------------------------------------------- body
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


def _intro(summary: AdapterSummary) -> str:
    """The opening sentence: method, base, what was learned and at what cost, the head."""
    base = summary.hub_base_model or summary.base_name or summary.base_architecture or "its base"
    base_link = (
        f"[`{base}`](https://huggingface.co/{base})" if summary.hub_base_model else f"`{base}`"
    )
    if summary.base_weights == "random":
        base_link += " (randomly initialised, not pretrained)"
    elif summary.base_weights in ("modified", "unknown"):
        base_link += f" (weights {summary.base_weights_text})"
    bits = summary.bits_per_masked_weight
    cost = f" (about {bits:.2f} bits per masked weight)" if bits is not None else ""
    labels = f"a {summary.num_labels}-class head" if summary.num_labels else "a task head"
    return (
        f"A **{summary.method}** task adapter made with pb-adapters for {base_link}: "
        f"{summary.description}{cost} plus {labels}. The base weights are never "
        "changed, so any number of such tasks can share one copy of the base model."
    )


def _usage_section(
    summary: AdapterSummary, repo_id: str | None, subfolder: str | None
) -> list[str]:
    return [
        "## Usage",
        "",
        "```python",
        usage_snippet(summary, repo_id, subfolder),
        "```",
        "",
        "Loading checks the format version, the layer shapes and the base model's fingerprint",
        "before anything is changed, and refuses a base with different weights.",
    ]


def _base_table(summary: AdapterSummary) -> list[str]:
    # Only a checkpoint has revisions; other bases are recorded under their architecture.
    revision = "unknown" if summary.base_weights in (None, "pretrained") else "none"
    out = [
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
    return out


def _mask_table(summary: AdapterSummary, plot_name: str | None) -> list[str]:
    """What the masks cost and how sparse they are, and the plot of that (if any)."""
    out = ["## Mask", "", "| | |", "|---|---|"]
    out.append(f"| method | {_cell(summary.method)} |")
    out.append(f"| masked layers | {summary.num_masked_modules:,} |")
    out.append(f"| masked weights | {summary.masked_weights:,} |")
    out.append(f"| mask size | {_fmt_bytes(summary.mask_bytes)} |")
    bits = summary.bits_per_masked_weight
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
    return out


def _hyperparameters_table(summary: AdapterSummary) -> list[str]:
    if not summary.hyperparameters:
        return []
    out = ["", "### Hyperparameters", "", "| name | value |", "|---|---|"]
    return out + [f"| {_cell(k)} | {_cell(v)} |" for k, v in summary.hyperparameters.items()]


def _labels_section(summary: AdapterSummary) -> list[str]:
    """The number of classes and the first :data:`_MAX_LABELS_SHOWN` of their names."""
    if not (summary.labels or summary.num_labels):
        return []
    count = summary.num_labels or len(summary.labels)
    out = ["", "## Labels", "", f"{count} classes."]
    if summary.labels:
        shown = summary.labels[:_MAX_LABELS_SHOWN]
        out += ["", "| id | label |", "|---|---|"]
        out += [f"| {i} | {_cell(label)} |" for i, label in enumerate(shown)]
        if len(summary.labels) > len(shown):
            out.append(f"| ... | {len(summary.labels) - len(shown)} more |")
    return out


def _metrics_table(summary: AdapterSummary) -> list[str]:
    """Training's own results, with the datasets they are on."""
    metrics = numeric_metrics(summary.metrics)
    if not metrics:
        return []
    on = f" on {', '.join(summary.datasets)}" if summary.datasets else ""
    out = ["", "## Evaluation", "", f"Results{on}.", "", "| metric | value |", "|---|---|"]
    return out + [f"| {_cell(k)} | {v:.4f} |" for k, v in metrics.items()]


def _citation(summary: AdapterSummary) -> list[str]:
    spec = method_spec(summary.method)
    citation = spec.citation if spec is not None else None
    if not citation:
        return []
    return ["", "## Citation", "", "```bibtex", citation, "```"]


def _body(
    summary: AdapterSummary,
    repo_id: str | None,
    subfolder: str | None,
    plot_name: str | None,
) -> str:
    title = (repo_id.split("/")[-1] if repo_id else "pb-adapters task") + (
        f" / {subfolder}" if subfolder else ""
    )
    out = [f"# {_cell(title)}", "", _intro(summary), ""]
    out += [*_usage_section(summary, repo_id, subfolder), ""]
    out += [*_base_table(summary), "", *_mask_table(summary, plot_name)]
    out += _hyperparameters_table(summary) + _labels_section(summary)
    if summary.tasks:
        out += _tasks_table(summary.tasks)
    out += _metrics_table(summary)
    if summary.evaluations:
        out += _evaluations_table(summary.evaluations)
    out += _citation(summary)
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
