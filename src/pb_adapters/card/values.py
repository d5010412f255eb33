"""What counts as an integer or a finite metric in a JSON record an artifact stores."""

from __future__ import annotations

import math
from typing import Any


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float; ``None`` for other types, NaN, infinities and integers too
    large for a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    numbers = {str(k): finite_float(v) for k, v in metrics.items()}
    return {k: v for k, v in numbers.items() if v is not None}
