"""One rank of a real multi-process training run, started by ``accelerate launch`` or ``torchrun``.

Trains a piggyback adapter on a tiny timm model and the demo digits, then writes this rank's
mask bits, scores and evaluation results to ``<out>/rank-<N>.safetensors`` / ``.json`` so the
test can compare ranks with each other and with a single-process run. Usage::

    python distributed_worker.py OUT_DIR BATCH_SIZE [--resume]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.training.data import DataConfig, build_transforms
from pb_adapters.training.demo import load_demo_dataset
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.factories import tiny_timm


def main(out: Path, batch_size: int, resume: bool) -> None:
    """Train, then dump this rank's masks, scores and metrics under ``out``."""
    acc = Accelerator(cpu=True)
    splits = load_demo_dataset(seed=0).limit(96, 24, seed=0)
    cfg = DataConfig(image_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    splits.set_transforms(*build_transforms(data_config=cfg, hflip=True, train_scale=(0.6, 1.0)))
    torch.manual_seed(0)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = TrainingArguments(
        output_dir=str(out / "run"),
        num_epochs=2,
        batch_size=batch_size,
        max_steps_per_epoch=3,
        mask_lr=2e-3,
        head_lr=1e-2,
        num_workers=0,
        disable_progress_bar=True,
        save_steps=1,
        save_total_limit=None,
        resume_from_checkpoint="latest" if resume else None,
    )
    result = PiggybackTrainer(model, args, splits=splits, accelerator=acc).train()
    tensors = {}
    for path, layer in acc.unwrap_model(model).adapter_layers():
        name = layer.active_adapter
        tensors[f"mask:{path}"] = layer.mask(name).detach().to(torch.int8).contiguous()
        tensors[f"score:{path}"] = layer.mask_scores[name].detach().contiguous()
    save_file(tensors, out / f"rank-{acc.process_index}.safetensors")
    (out / f"rank-{acc.process_index}.json").write_text(
        json.dumps(
            {
                "num_processes": acc.num_processes,
                "test": result.test,
                "validation": result.validation,
                "best_epoch": result.best_epoch,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv[3:])
