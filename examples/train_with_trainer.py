"""Learn a piggyback mask with the Hugging Face ``transformers.Trainer``.

Offline, on the demo backbone (ImageNet EfficientNet-Lite0) and the demo MNIST digits that ship
with the ``examples`` extra::

    python examples/train_with_trainer.py                    # 40 steps on 640 digits, 32 px
    python examples/train_with_trainer.py --max-steps 10 --train-size 128
    python examples/train_with_trainer.py --tiny             # a tiny random timm model

It trains with ``PiggybackHFTrainer`` (the stock Trainer, with masks and head at their own
learning rates), resumes from the first checkpoint to show that a run continues where it
stopped, turns the last checkpoint into a task folder and reloads that onto a fresh backbone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here ships in installed packages

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import TrainingArguments

from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.integrations import PiggybackHFTrainer, load_trainer_checkpoint


def backbone(tiny: bool) -> torch.nn.Module:
    """The demo EfficientNet-Lite0 with its ImageNet weights, or a tiny random timm model."""
    if tiny:
        import timm

        torch.manual_seed(0)
        return timm.create_model("test_resnet", pretrained=False).eval()
    from pb_adapters.demo_base import load_demo_backbone

    return load_demo_backbone()


def digits(train_size: int, test_size: int, image_size: int) -> tuple[Dataset, Dataset]:
    """The demo digits as ``datasets`` with ``pixel_values`` and ``label`` columns."""
    from pb_adapters.training.demo import read_demo_mnist

    images, labels = read_demo_mnist()
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    pixels = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    pixels = F.interpolate(pixels, size=image_size, mode="bilinear", align_corners=False)
    pixels = (pixels - 0.5) / 0.5  # EfficientNet-Lite0's normalisation

    def part(start: int, stop: int) -> Dataset:
        data = {"pixel_values": pixels[start:stop].numpy(), "label": labels[start:stop].tolist()}
        return Dataset.from_dict(data).with_format("torch")

    return part(0, train_size), part(train_size, train_size + test_size)


def accuracy(prediction) -> dict[str, float]:
    """``compute_metrics`` for Trainer: top-1 accuracy."""
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main() -> None:
    """Train, resume, turn the checkpoint into a task folder and reload it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=40, help="optimiser steps (default 40)")
    parser.add_argument("--train-size", type=int, default=640, help="training images (640)")
    parser.add_argument("--test-size", type=int, default=256, help="test images (256)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (32)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (16)")
    parser.add_argument("--output-dir", default="outputs/trainer-demo", help="where to write")
    parser.add_argument("--tiny", action="store_true", help="a tiny random timm model instead")
    args = parser.parse_args()
    out = Path(args.output_dir)
    id2label = {i: str(i) for i in range(10)}
    # The demo's rates: the official mask rate, a higher head rate for a short run.
    config = PiggybackConfig(id2label=id2label, mask_lr=1e-4, head_lr=1e-3)

    def fresh_model() -> PiggybackModel:
        torch.manual_seed(0)
        return get_piggyback_model(backbone(args.tiny), config)

    train, test = digits(args.train_size, args.test_size, args.image_size)
    training_args = TrainingArguments(
        output_dir=str(out / "run"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        save_steps=max(args.max_steps // 2, 1),
        logging_steps=max(args.max_steps // 6, 1),
        lr_scheduler_type="cosine",
        report_to=[],
        seed=0,
        disable_tqdm=True,
    )
    model = fresh_model()
    model.print_trainable_parameters()
    trainer = PiggybackHFTrainer(
        model=model, args=training_args, train_dataset=train, compute_metrics=accuracy
    )
    trainer.train()
    print("test:", trainer.evaluate(test))

    # A second run from the first checkpoint ends with exactly the same weights.
    checkpoints = sorted((out / "run").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    print("checkpoints:", [p.name for p in checkpoints])
    resumed = fresh_model()
    resume_args = dataclasses.replace(training_args, output_dir=str(out / "resumed"))
    PiggybackHFTrainer(model=resumed, args=resume_args, train_dataset=train).train(
        resume_from_checkpoint=str(checkpoints[0])
    )
    final, again = model.state_dict(), resumed.state_dict()
    same = all(torch.equal(final[k], again[k]) for k in final)
    print("resumed run equals the uninterrupted one:", same)

    # The last checkpoint as a task folder, reloaded onto a freshly created backbone.
    folder = load_trainer_checkpoint(fresh_model(), checkpoints[-1]).save_pretrained(out / "task")
    reloaded = PiggybackModel.from_pretrained(backbone(args.tiny), folder)
    scorer = PiggybackHFTrainer(model=reloaded, args=resume_args, compute_metrics=accuracy)
    print(f"task folder {folder}:", scorer.evaluate(test))


if __name__ == "__main__":
    main()
