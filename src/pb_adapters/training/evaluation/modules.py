"""The ``evaluate`` metric modules that ship inside pb-adapters and load without the Hub.

``evaluate.load("accuracy")`` fetches its script from the Hub; these scripts are part of the
package instead (``pb_adapters/training/evaluation/metrics/<name>/<name>.py``), so
``evaluate.load(metric_path(name))`` works offline. ``evaluate`` copies a loaded script into its
modules cache (``HF_MODULES_CACHE``) and imports it from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pb_adapters.errors import ConfigError

__all__ = ["METRICS_DIR", "METRIC_NAMES", "load_metric", "metric_path"]

#: The folder of the packaged metric scripts.
METRICS_DIR = Path(__file__).parent / "metrics"

#: The packaged metrics: top-1 accuracy, top-k accuracy, per-class F1 and the confusion matrix.
METRIC_NAMES: tuple[str, ...] = ("accuracy", "top_k_accuracy", "f1_per_class", "confusion_matrix")


def metric_path(name: str) -> Path:
    """The folder of the packaged metric ``name`` (what ``evaluate.load`` takes)."""
    if name not in METRIC_NAMES:
        raise ConfigError(f"unknown metric {name!r}; the packaged metrics are {list(METRIC_NAMES)}")
    return METRICS_DIR / name


def load_metric(name: str, **kwargs: Any) -> Any:
    """``evaluate.load`` of a packaged metric (in memory unless ``keep_in_memory=False``)."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)
