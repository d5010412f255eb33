"""PNG plots of the benchmark results, for ``docs/benchmarks.md``.

Drawn with matplotlib's object API on an Agg canvas (no ``pyplot``), from the same JSON files the
tables come from; a plot whose result file is missing is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    return path


def accuracy_plot(data: dict[str, Any], folder: Path) -> Path:
    """Test top-1 against bytes stored per task (log scale), one panel per task, mean ± sd."""
    rows = [r for r in data["rows"] if "weights_bytes" in r]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    figure = _figure(5.2 * len(tasks) + 1.6, 3.8)
    for index, task in enumerate(tasks):
        axes = figure.add_subplot(1, len(tasks), index + 1)
        for r in (r for r in rows if r["task"] == task):
            acc = r["test_accuracy"]
            axes.errorbar(
                r["weights_bytes"]["mean"], 100 * acc["mean"], yerr=100 * acc["std"],
                fmt="o", capsize=3, label=r["method"],
            )  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlabel("bytes stored per task")
        axes.set_ylabel("test top-1 (%)")
        axes.set_title(f"{task} ({rows[0]['seeds']} seeds, mean ± sd)")
        axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7)
    return _save(figure, folder, "accuracy.png")


def training_cost_plot(data: dict[str, Any], folder: Path) -> Path:
    """Step time and peak memory of each method as a ratio to full fine-tuning."""
    rows = [r for r in data["rows"] if r["method"] != "finetune"]
    settings = list(dict.fromkeys((r["image_size"], r["processes"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    figure = _figure(8.5, 3.4)
    width = 0.8 / len(settings)
    for index, (key, label) in enumerate(
        [
            ("step_time_ratio_vs_finetune", "step time / fine-tuning"),
            ("peak_memory_ratio_vs_finetune", "peak memory / fine-tuning"),
        ]
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        for s, (size, procs) in enumerate(settings):
            values = {
                r["method"]: r[key]
                for r in rows
                if (r["image_size"], r["processes"]) == (size, procs)
            }
            xs = [m + (s - (len(settings) - 1) / 2) * width for m in range(len(methods))]
            axes.bar(
                xs, [values.get(m, 0.0) for m in methods], width, label=f"{size} px, {procs} proc"
            )
        axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axes.set_xticks(range(len(methods)), methods)
        axes.set_title(label)
        axes.grid(axis="y", alpha=0.3)
        if index == 0:
            axes.legend(fontsize=7)
    return _save(figure, folder, "training_cost.png")


def storage_plot(data: dict[str, Any], folder: Path) -> Path:
    """Bits per masked weight against the fraction of zeros: entropy, coder, packing, zlib."""
    masks = data["masks"]
    random_masks = sorted(
        (v["size"] for k, v in masks.items() if k.startswith("random")),
        key=lambda s: s["zero_fraction"],
    )
    figure = _figure(6.5, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    xs = [100 * s["zero_fraction"] for s in random_masks]
    encodings = [e for e in random_masks[0]["bits_per_masked_weight"] if e != "bitpack"]
    for encoding in encodings:
        axes.plot(
            xs,
            [s["bits_per_masked_weight"][encoding] for s in random_masks],
            marker="o" if encoding in ("entropy", "ans") else ".",
            linestyle="-" if encoding in ("entropy", "ans") else ":",
            label="order-0 entropy" if encoding == "entropy" else encoding,
        )
    axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="bit packing")
    learned = masks.get("learned (demo)")
    if learned is not None:
        size = learned["size"]
        axes.scatter(
            [100 * size["zero_fraction"]],
            [size["bits_per_masked_weight"]["ans"]],
            marker="*",
            s=120,
            color="crimson",
            zorder=5,
            label="learned demo mask (ans)",
        )
    axes.set_xlabel("zeros in the mask (%)")
    axes.set_ylabel("bits per masked weight")
    axes.set_ylim(0, 1.1)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return _save(figure, folder, "storage.png")
