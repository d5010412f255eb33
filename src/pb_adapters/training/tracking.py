"""Experiment trackers (TensorBoard, Weights & Biases, MLflow...) through Accelerate.

``report_to`` names the trackers a run logs to, as in the transformers ``Trainer``: ``"none"``,
``"all"`` (every installed one), a tracker name, a list of names, or ``"auto"`` (the default):
TensorBoard when it is installed, plus the hosted trackers whose installation is configured by
their usual environment variables (``WANDB_API_KEY`` / ``WANDB_MODE``, ``MLFLOW_TRACKING_URI``,
``COMET_API_KEY``), so nothing tries to log in where the user did not set it up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from pb_adapters.errors import ConfigError

__all__ = ["TRACKER_NAMES", "resolve_report_to", "tracker_config"]

#: Tracker names Accelerate knows, in the order "all" lists them.
TRACKER_NAMES: tuple[str, ...] = (
    "tensorboard",
    "wandb",
    "mlflow",
    "comet_ml",
    "aim",
    "clearml",
    "dvclive",
    "swanlab",
    "trackio",
)
# hosted trackers "auto" picks only when their environment says they are set up
_CONFIGURED_BY_ENV: dict[str, tuple[str, ...]] = {
    "wandb": ("WANDB_API_KEY", "WANDB_MODE"),
    "mlflow": ("MLFLOW_TRACKING_URI",),
    "comet_ml": ("COMET_API_KEY",),
}


def _installed(name: str) -> bool:
    from accelerate import utils

    check = getattr(utils, f"is_{name}_available", None)
    return bool(check()) if check is not None else False


def resolve_report_to(report_to: str | Sequence[str] | None) -> list[str]:
    """The tracker names ``report_to`` selects (see the module docstring).

    Raises:
        ValueError: an unknown name, or a named tracker that is not installed.
    """
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n for part in names for n in re.split(r"[,\s]+", str(part).strip()) if n]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return [n for n in TRACKER_NAMES if _installed(n)]
    if names == ["auto"]:
        return [
            n
            for n in TRACKER_NAMES
            if _installed(n)
            and (
                n == "tensorboard" or any(os.environ.get(v) for v in _CONFIGURED_BY_ENV.get(n, ()))
            )
        ]
    unknown = [n for n in names if n not in TRACKER_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown tracker(s) {', '.join(unknown)} in report_to; choose from none, auto, all, "
            + ", ".join(TRACKER_NAMES)
        )
    missing = [n for n in names if not _installed(n)]
    if missing:
        raise ConfigError(
            f"report_to names {', '.join(missing)}, which is not installed "
            f"(pip install {' '.join(missing)})"
        )
    return list(dict.fromkeys(names))


def tracker_config(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` reduced to what every tracker accepts as run configuration: scalars and strings.

    (TensorBoard's hyperparameter table refuses ``None``, lists and dicts.)
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)) and value:
            out[key] = ",".join(map(str, value))
    return out
