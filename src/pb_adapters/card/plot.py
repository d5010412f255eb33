"""The per-layer mask sparsity plot a card shows: deterministic PNG bytes, no pyplot."""

from __future__ import annotations

import io
from pathlib import Path

from ..utils.files import atomic_write_bytes
from .summary import AdapterSummary


def plot_mask_sparsity(summary: AdapterSummary, path: str | Path) -> Path | None:
    """Draw per-layer sparsity (percent of mask entries that are 0) as a PNG at ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change) and writes no
    timestamp or version metadata, so the same artifact always gives the same bytes. Returns
    ``None`` (and writes nothing) when the artifact records no per-layer counts.
    """
    png = sparsity_png(summary)
    if png is None:
        return None
    path = Path(path)
    atomic_write_bytes(path, png)
    return path


def sparsity_png(summary: AdapterSummary) -> bytes | None:
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
