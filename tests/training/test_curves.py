"""The training-curve plot."""

from __future__ import annotations

from pathlib import Path

from pb_adapters.training.curves import plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_curves_are_a_png_and_leave_pyplot_alone(tmp_path: Path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    history = [
        {"epoch": 1, "train_loss": 2.0, "train_top1": 0.2, "val_loss": 1.8, "val_top1": 0.3},
        {"epoch": 2, "train_loss": 1.5, "train_top1": 0.4, "val_loss": 1.6, "val_top1": 0.35},
    ]
    out = plot_training_curves(history, tmp_path / "sub" / "curves.png", title="demo")
    assert out.read_bytes()[:8] == PNG_MAGIC
    # without a validation split only the training curves are drawn
    no_val = plot_training_curves([{"epoch": 1, "train_loss": 1.0, "train_top1": 0.5}], out)
    assert no_val.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.get_backend() == backend
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []
