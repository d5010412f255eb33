"""The training-curve plot: loss and top-1 accuracy per epoch, for training and validation.

Drawn with matplotlib's object API on an Agg canvas (no ``pyplot``): nothing is registered in
pyplot's global figure list and the process's matplotlib backend is left alone, so the trainer can
run inside notebooks and other programs without side effects.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pb_adapters.utils.files import atomic_write_bytes

__all__ = ["CURVES_FILE_NAME", "plot_training_curves"]

#: File name of the plot written next to the artifact.
CURVES_FILE_NAME = "training_curves.png"


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(int(h["epoch"]), float(h[key])) for h in history if h.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def plot_training_curves(
    history: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Plot loss and top-1 accuracy per epoch (training and validation) into a PNG at ``path``.

    ``history`` is :attr:`TrainResult.history <pb_adapters.training.trainer.TrainResult>`: one
    dict per epoch with ``epoch``, ``train_loss``, ``train_top1`` and, with a validation split,
    ``val_loss`` and ``val_top1``. Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to the figure
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric, label in ((loss_ax, "loss", "loss"), (acc_ax, "top1", "top-1 accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            epochs, values = _series(history, f"{split}_{metric}")
            if values:
                name = "training" if split == "train" else "validation"
                ax.plot(epochs, values, style, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
            ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    out = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(out, buffer.getvalue())  # a crash never leaves half a PNG
    return out
