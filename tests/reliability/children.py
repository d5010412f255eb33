"""Work done in child processes that the kill tests SIGKILL at random points.

The children are forked from a fork server that imported this module (and ran
:func:`_warm_up`), so each starts in milliseconds instead of a fresh interpreter's seconds of
imports.
"""

from __future__ import annotations

import json
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.training.data import DataConfig, build_transforms, load_image_folder
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.devices import cpu_copy, exactly, suite_device
from tests.factories import tiny_timm
from tests.reliability.artifacts import trained


def _warm_up() -> None:
    """Import what the first model and the first card import lazily (transformers, matplotlib)
    before forking, so that no child spends its life importing."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import transformers  # noqa: F401
    from tqdm.auto import tqdm

    trained("binary")
    # tqdm's process-shared lock: made once here, not in each child, where SIGKILL would leak it
    tqdm.get_lock()


_warm_up()


def versioned_model(version: int) -> Any:
    """The adapter whose masks and head are those of save number ``version``."""
    return trained("ternary" if version % 2 else "norms", seed=1000 + version)


def save_versions(folder: str, start: int, ready: Connection) -> None:
    """Save versions ``start, start + 1, ...`` into ``folder`` until killed."""
    model = versioned_model(start)
    ready.send("ready")
    version = start
    while True:
        # a save renders its card before it writes anything: only every third save has one, so
        # that most kills land among the files' writes rather than in the plot's rendering
        model.save_pretrained(folder, metrics={"version": version}, write_card=version % 3 == 0)
        version += 1
        model = versioned_model(version)


# ------------------------------------------------------------------------------- training
def write_image_folder(root: Path, classes: int = 2, per_class: int = 10) -> Path:
    """A tiny image-folder data set of coloured noise, one hue per class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (16, 16, 3), dtype=np.uint8)
            pixels[..., c % 3] += 120
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def make_trainer(
    data: str, out: str, resume: str | None = None, **overrides: Any
) -> PiggybackTrainer:
    """The trainer of the kill test: 2 epochs x 4 steps, a checkpoint after every step (other
    :class:`TrainingArguments` values in ``overrides``)."""
    splits = load_image_folder(data, val_fraction=0.2, test_fraction=0.0, seed=0)
    config = DataConfig(image_size=16, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    splits.set_transforms(*build_transforms(data_config=config, hflip=True))
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = TrainingArguments(
        output_dir=out,
        num_epochs=2,
        batch_size=4,
        max_steps_per_epoch=4,
        mask_lr=1e-2,
        head_lr=1e-2,
        num_workers=0,
        save_steps=1,
        save_total_limit=2,
        disable_progress_bar=True,
        save_artifact=False,
        resume_from_checkpoint=resume,
        report_to="none",
    )
    return PiggybackTrainer(model, replace(args, **overrides), splits=splits)


def run(data: str, out: str, resume: str | None = None) -> PiggybackTrainer:
    """Train (or resume) :func:`make_trainer`'s run to its end, bit-exact on every device."""
    with exactly(suite_device()):
        trainer = make_trainer(data, out, resume)
        trainer.train()
    return trainer


def trained_state(trainer: PiggybackTrainer) -> dict[str, torch.Tensor]:
    """CPU copies of the mask bits and head weights a run ended with."""
    model = trainer.model
    state = {f"mask:{path}": layer.mask("default") != 0 for path, layer in model.adapter_layers()}
    for name, param in model.named_parameters():
        if param.requires_grad and "mask_scores" not in name:
            state[name] = param
    return cpu_copy(state)


def train(data: str, out: str, resume: str | None, log: str) -> None:
    """Run (or resume) the kill test's training; record the steps it finished."""
    run(data, out, resume)
    Path(log).write_text(json.dumps({"finished": True}))
