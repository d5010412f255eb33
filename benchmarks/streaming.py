"""Training throughput from a streamed source against the same data read map-style.

One image folder (3 classes of noisy 64 px PNGs) is read both ways by the trainer: map-style
(:func:`~pb_adapters.training.data.load_image_folder`: files listed up front, random access) and
streamed (:func:`~pb_adapters.training.data.streaming.load_streaming_datasets`: ``datasets``
``imagefolder`` with ``streaming=True``, a shuffle buffer). Each run trains a piggyback adapter on
a tiny timm ResNet for the same number of steps in one process, loading in the main process
(``num_workers=0``), without validation, checkpoints or artifact; the runs alternate between the
two readers and the medians of the training-loop time are compared. Streaming adds the
``datasets`` pipeline (Arrow rows, shuffle buffer) and per-example seeding to the same decoding
and augmentation.

python -m benchmarks.streaming [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_result

RESULT_NAME = "streaming-cpu"
CLASSES = ["a", "b", "c"]


def _folder(root: Path, per_class: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(60 * c + rng.integers(0, 120, size=(64, 64, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _train(data: Any, args: Any) -> float:
    """Seconds of the training loop (one epoch of ``args`` steps)."""
    from tests.factories import tiny_timm

    from pb_adapters import PiggybackConfig, get_piggyback_model
    from pb_adapters.training.trainer import PiggybackTrainer

    torch.manual_seed(0)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=data[1]))
    result = PiggybackTrainer(model, args, train_dataset=data[0]).train()
    return float(result.history[0]["epoch_seconds"])


def run(steps: int = 60, repeats: int = 3, batch_size: int = 16) -> dict[str, Any]:
    """Time both readers; write ``results/streaming-cpu.json``; return the figures."""
    from pb_adapters.training.data import DataConfig, build_transforms, load_image_folder
    from pb_adapters.training.data.streaming import load_streaming_datasets
    from pb_adapters.training.trainer import TrainingArguments

    cfg = DataConfig(image_size=64, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    train_tf, _ = build_transforms(data_config=cfg, hflip=True, train_scale=(0.6, 1.0))
    seconds: dict[str, list[float]] = {"map-style": [], "streaming": []}
    with tempfile.TemporaryDirectory() as tmp:
        per_class = steps * batch_size // len(CLASSES) + 1  # one pass covers every step
        root = _folder(Path(tmp) / "images", per_class)
        common = {
            "num_epochs": 1, "batch_size": batch_size, "num_workers": 0, "report_to": "none",
            "disable_progress_bar": True, "save_epoch_checkpoints": False, "save_artifact": False,
        }  # fmt: skip
        for _ in range(repeats):
            mapped = load_image_folder(root, val_fraction=0.0, test_fraction=0.0)
            mapped.train.transform = train_tf
            args = TrainingArguments(output_dir=f"{tmp}/map", max_steps_per_epoch=steps, **common)
            seconds["map-style"].append(_train((mapped.train, mapped.id2label), args))
            streamed = load_streaming_datasets(root, shuffle_buffer=256)
            streamed.train.transform = train_tf
            args = TrainingArguments(output_dir=f"{tmp}/stream", steps_per_epoch=steps, **common)
            seconds["streaming"].append(_train((streamed.train, streamed.id2label), args))
    median = {k: statistics.median(v) for k, v in seconds.items()}
    payload = {
        "steps": steps,
        "batch_size": batch_size,
        "images": per_class * len(CLASSES),
        "seconds": seconds,
        "median_seconds": median,
        "steps_per_second": {k: steps / v for k, v in median.items()},
        "streaming_throughput_ratio": median["map-style"] / median["streaming"],
    }
    print(write_result(RESULT_NAME, payload))
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args()
    out = run(ns.steps, ns.repeats)
    print({k: out[k] for k in ("median_seconds", "steps_per_second", "streaming_throughput_ratio")})


if __name__ == "__main__":
    main()
