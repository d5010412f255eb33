"""What an evaluation found: the scores, a JSON form, and the confusion-matrix plot."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pb_adapters.utils.files import atomic_write_bytes

__all__ = ["CONFUSION_PLOT_NAME", "RESULT_NAME", "EvaluationResult", "plot_confusion_matrix"]

#: File names :meth:`EvaluationResult.save` writes.
RESULT_NAME = "evaluation.json"
CONFUSION_PLOT_NAME = "confusion_matrix.png"

# Beyond this many classes the plot drops its tick labels and cell counts (they would overlap).
_MAX_ANNOTATED_CLASSES = 30


@dataclass
class EvaluationResult:
    """The scores of one task on one split of a dataset.

    Attributes:
        dataset: the dataset's name (an image folder's name, a ``datasets`` name, ``mnist-5k``).
        split: ``"test"``, ``"validation"`` or ``"train"``.
        num_samples: images scored.
        labels: the task's class names, by class index.
        accuracy: top-1 accuracy in [0, 1].
        top_k: the ``k`` of :attr:`top_k_accuracy`.
        top_k_accuracy: fraction of samples whose class is among the ``top_k`` best scores.
        f1 / precision / recall: per class; ``None`` where undefined (see the metric module).
        support: reference samples of each class.
        macro_f1: mean of the defined per-class F1 values.
        confusion_matrix: ``[reference][prediction]`` counts.
    """

    dataset: str
    split: str
    num_samples: int
    labels: list[str]
    accuracy: float
    top_k: int
    top_k_accuracy: float
    f1: list[float | None]
    precision: list[float | None]
    recall: list[float | None]
    support: list[int]
    macro_f1: float | None
    confusion_matrix: list[list[int]] = field(repr=False)

    def metrics(self) -> dict[str, float]:
        """The headline numbers: ``accuracy``, ``top<k>_accuracy`` and ``macro_f1``."""
        out = {"accuracy": self.accuracy, f"top{self.top_k}_accuracy": self.top_k_accuracy}
        if self.macro_f1 is not None:
            out["macro_f1"] = self.macro_f1
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        """Write ``evaluation.json`` and ``confusion_matrix.png`` into ``folder``; return it."""
        folder = Path(folder)
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        atomic_write_bytes(folder / RESULT_NAME, text.encode("utf-8"))
        plot_confusion_matrix(self, folder / CONFUSION_PLOT_NAME)
        return folder


def plot_confusion_matrix(result: EvaluationResult, path: str | Path) -> Path:
    """Draw the confusion matrix as a PNG, each row shaded by the fraction of its class.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). Class names and
    counts are written in the cells up to 30 classes; beyond, the shading alone shows the pattern.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(result.confusion_matrix, dtype=np.float64)
    n = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = min(4.0 + 0.35 * n, 16.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"{result.dataset} ({result.split}, {result.num_samples:,} images), "
        f"accuracy {100 * result.accuracy:.2f}%",
        fontsize=10,
    )
    if n <= _MAX_ANNOTATED_CLASSES:
        ax.set_xticks(range(n))
        ax.set_xticklabels(result.labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels(result.labels, fontsize=8)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=color)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
