"""The LoRA reference of the accuracy benchmark, through PEFT's public API.

A LoRA run uses the same backbone, data splits, transforms and schedule as the project's runs:
the data and model come from the training command line's own helpers, the schedule is Adam with
a x0.1 step at the midpoint and the best epoch chosen on validation. LoRA goes on every
non-depthwise convolution (PEFT's LoRA has no grouped convolutions) with a fresh, trained
classifier saved alongside (``modules_to_save``); the norm layers stay frozen in eval mode, as in
the mask methods, so the saved adapter is the whole task. The bytes stored per task are those of
the ``adapter_model.safetensors`` PEFT writes.

PEFT is an optional benchmark dependency: ``pip install "pb-adapters[benchmarks]"``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: The LoRA scaling used everywhere here: alpha = 2 x rank.
ALPHA_PER_RANK = 2
#: Adam learning rate of the LoRA factors and the head.
LORA_LR = 1e-3


class MissingBenchmarkDependency(ImportError):
    """A package the benchmark needs is not installed."""


def require_peft() -> Any:
    """The ``peft`` module, or a clear error saying how to install it."""
    try:
        import peft
    except ImportError as err:
        raise MissingBenchmarkDependency(
            "the LoRA rows of the accuracy benchmark need PEFT: "
            'pip install "pb-adapters[benchmarks]" (or pip install peft)'
        ) from err
    return peft


def lora_targets(model: nn.Module, head: str) -> list[str]:
    """Names of the convolutions and linear layers LoRA adapts: all but depthwise/grouped
    convolutions and the classifier ``head``."""
    names = []
    for name, module in model.named_modules():
        if name == head or name.startswith(head + "."):
            continue
        depthwise = isinstance(module, nn.Conv2d) and module.groups != 1
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not depthwise:
            names.append(name)
    return names


def wrap_lora(model: nn.Module, rank: int, head: str) -> nn.Module:
    """``model`` with LoRA factors of ``rank`` on :func:`lora_targets` and a trainable ``head``."""
    peft = require_peft()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=ALPHA_PER_RANK * rank,
        lora_dropout=0.0,
        target_modules=lora_targets(model, head),
        modules_to_save=[head],
    )
    return peft.get_peft_model(model, config)


def adapter_bytes(model: nn.Module, folder: Path) -> int:
    """Save the PEFT adapter of ``model`` into ``folder``; the size of its safetensors file."""
    model.save_pretrained(str(folder))
    return (folder / "adapter_model.safetensors").stat().st_size


def set_frozen_norm_mode(model: nn.Module) -> None:
    """Training mode, except the norm layers, which keep their running statistics (eval)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.no_grad()
def accuracy(model: nn.Module, loader: Any) -> float:
    """Top-1 accuracy of ``model`` over ``loader``."""
    model.eval()
    right = total = 0
    for images, labels in loader:
        right += int((model(images).argmax(-1) == labels).sum())
        total += len(labels)
    return right / max(total, 1)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def fit(model: nn.Module, loaders: dict[str, Any], epochs: int, lr: float) -> dict[str, Any]:
    """Adam over the trainable parameters, x0.1 at the midpoint, best epoch on validation."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    milestone = max(1, round(epochs / 2 * len(loaders["train"])))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 if step >= milestone else 1.0
    )
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    start, steps, step_seconds = time.perf_counter(), 0, 0.0
    for epoch in range(1, epochs + 1):
        set_frozen_norm_mode(model)
        for images, labels in loaders["train"]:
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step_seconds += time.perf_counter() - t0
            steps += 1
        val = accuracy(model, loaders["validation"])
        if val > best[0]:
            best = (val, epoch, _trainable_state(model))
    train_seconds = time.perf_counter() - start
    model.load_state_dict(copy.deepcopy(best[2]), strict=False)
    return {
        "best_epoch": best[1],
        "validation_accuracy": best[0],
        "test_accuracy": accuracy(model, loaders["test"]),
        "train_seconds": round(train_seconds, 1),
        "step_seconds": step_seconds / max(steps, 1),
    }
