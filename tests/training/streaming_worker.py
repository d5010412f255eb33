"""One rank of a real multi-process streamed training run, started by ``accelerate launch``.

Trains a piggyback adapter on a tiny timm model from a streamed parquet folder and writes the
examples this rank trained on (a hash of each image's pixels) and its mask bits to
``<out>/rank-<N>.json`` / ``.safetensors``. Usage::

    python streaming_worker.py DATA_DIR OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.training.data import DataConfig, build_transforms
from pb_adapters.training.data.streaming import load_streaming_datasets
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.factories import tiny_timm


class Recording:
    """A transform that remembers which images it was given."""

    def __init__(self, transform) -> None:
        self.transform, self.seen = transform, []

    def __call__(self, image):
        self.seen.append(hashlib.sha1(image.tobytes()).hexdigest())
        return self.transform(image)


def main(data: Path, out: Path) -> None:
    acc = Accelerator(cpu=True)
    splits = load_streaming_datasets(data, val_examples=4, shuffle_buffer=8, seed=0)
    cfg = DataConfig(image_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    train_tf, eval_tf = build_transforms(data_config=cfg, hflip=True, train_scale=(0.6, 1.0))
    recording = Recording(train_tf)
    splits.set_transforms(recording, eval_tf)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = TrainingArguments(
        output_dir=str(out / "run"), num_epochs=2, batch_size=4, steps_per_epoch=2,
        mask_lr=2e-3, head_lr=1e-2, num_workers=0, disable_progress_bar=True, report_to="none",
    )  # fmt: skip
    PiggybackTrainer(model, args, splits=splits, accelerator=acc).train()
    masks = {
        path: layer.mask(layer.active_adapter).detach().to(torch.int8).contiguous()
        for path, layer in acc.unwrap_model(model).adapter_layers()
    }
    save_file(masks, out / f"rank-{acc.process_index}.safetensors")
    (out / f"rank-{acc.process_index}.json").write_text(
        json.dumps({"num_processes": acc.num_processes, "seen": recording.seen})
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
