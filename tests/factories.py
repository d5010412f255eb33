"""Tiny models with random weights, the same architectures users adapt, for fast tests."""

from __future__ import annotations

from collections import Counter

import timm
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

TIMM_MODELS = [
    "test_resnet",
    "test_efficientnet",
    "test_vit",
    "test_convnext",
    "tf_efficientnet_lite0",
]
TRANSFORMERS_MODELS = ["vit", "convnext", "resnet"]


def tiny_timm(
    name: str = "test_resnet", num_classes: int = 7, seed: int = 0, **kwargs
) -> nn.Module:
    """A timm model with deterministic random weights, in eval mode."""
    torch.manual_seed(seed)
    if name.startswith("test_vit"):
        kwargs.setdefault("img_size", 32)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return randomize_norm_statistics(model).eval()


def randomize_norm_statistics(model: nn.Module) -> nn.Module:
    """Random BatchNorm running statistics: they make frozen-BatchNorm tests meaningful."""
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.running_mean is not None
            ):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def tiny_from_config(model_class: str, config_class: str, seed: int = 0, **config) -> nn.Module:
    """Any transformers model, by class names, from a tiny config, in eval mode."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
    return randomize_norm_statistics(model).eval()


def tiny_transformers(kind: str = "vit", num_labels: int = 5, seed: int = 0) -> nn.Module:
    """A transformers ``*ForImageClassification`` model from a tiny config, in eval mode."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(seed)
    if kind == "vit":
        config = ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=num_labels,
        )
        model = ViTForImageClassification(config)
    elif kind == "convnext":
        config = ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels
        )
        model = ConvNextForImageClassification(config)
    elif kind == "resnet":
        config = ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels
        )
        model = ResNetForImageClassification(config)
    else:
        raise ValueError(kind)
    return model.eval()


def logits(output) -> torch.Tensor:
    """Logits from a timm (tensor) or transformers (``ImageClassifierOutput``) forward."""
    return output if isinstance(output, torch.Tensor) else output.logits


def call(model, x: torch.Tensor) -> torch.Tensor:
    """Logits of a plain or wrapped timm / transformers model for images ``x``."""
    base = getattr(model, "base_model", model)
    is_transformers = type(base).__module__.startswith("transformers")
    return logits(model(pixel_values=x) if is_transformers else model(x))


def call_task(model, name: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of task ``name`` alone on ``x`` (``BASE_ADAPTER_NAME``: the plain base); a task
    name stays the active adapter afterwards."""
    from pb_adapters.model import BASE_ADAPTER_NAME

    if name == BASE_ADAPTER_NAME:
        with model.disable_adapter():
            return call(model, x)
    model.set_adapter(name)
    return call(model, x)


def train_steps(model, x: torch.Tensor, y: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> None:
    """A few Adam steps on the active adapter's trainable parameters; leaves the model in eval."""
    params = [p for group in model.parameter_groups().values() for p in group]
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(call(model, x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def image_folder(
    root, classes, per_class: int = 4, *, splits=("train", "test"), size: int = 32, seed: int = 0
):
    """An image folder ``root/<split>/<class>/<i>.png`` of small noisy images, one base colour per
    class (so a model's outputs differ between classes); returns ``root``."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([(60 * c) % 256, (120 + 50 * c) % 256, (200 - 40 * c) % 256])
            for i in range(per_class):
                noise = rng.integers(-60, 61, size=(size, size, 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def assert_mixed_close(mixed: torch.Tensor, alone: torch.Tensor) -> None:
    """A mixed-task batch's rows against the same samples run on their own task.

    A mixed batch computes all tasks in one grouped convolution or batched matrix product per
    layer, which sums in another order than the plain layer: equal up to float32 rounding.
    """
    torch.testing.assert_close(mixed, alone, rtol=1e-4, atol=1e-5)


class OpCounter(TorchDispatchMode):
    """Counts the tensor operations dispatched (after autograd, as a device would receive them)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """Operations counted so far."""
        return sum(self.counts.values())


def count_ops(fn) -> OpCounter:
    """Run ``fn()`` and count the tensor operations it dispatches."""
    with OpCounter() as counter:
        fn()
    return counter


def _randomise_task(model, name: str, seed: int) -> None:
    """Give task ``name`` random state, as training would: masks with some zeros (and -1s),
    KSM scales, PackNet weights of its own."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            scores = getattr(layer, "mask_scores", {})
            if name in scores:
                values = scores[name]
                values.copy_(1e-2 + 1.5e-2 * torch.randn(values.shape, generator=gen))
            free = getattr(layer, "free", {})
            if name in free:
                free[name].add_(0.1 * torch.randn(free[name].shape, generator=gen))


def frozen_tasks(factory, config_cls, names, folder, classes=None, **config):
    """A fresh base from ``factory`` with tasks ``names`` loaded frozen from saved artifacts.

    Each task has random state (see above) and ``classes[i]`` classes (default 3). PackNet's
    tasks are packed one after another into one network.
    """
    from pb_adapters import PackNetConfig, PiggybackModel, get_piggyback_model
    from pb_adapters.methods.packnet import finalize_task, prune_task

    classes = classes or [3] * len(names)
    model = None
    for index, (name, count) in enumerate(zip(names, classes, strict=True)):
        task_config = config_cls(num_labels=count, **config)
        if model is None:
            model = get_piggyback_model(factory(), task_config, name)
        else:
            model.add_adapter(name, task_config)
        model.set_adapter(name)
        _randomise_task(model, name, seed=index)
        if config_cls is PackNetConfig:
            prune_task(model, name, 0.5)
            finalize_task(model, name)
    if config_cls is PackNetConfig:  # one artifact holds the whole packed network
        model.save_pretrained(folder / "net", names[-1], write_card=False)
        loaded = PiggybackModel.from_pretrained(factory(), folder / "net", adapter_name=names[-1])
        return loaded.eval()
    loaded = None
    for name in names:
        model.save_pretrained(folder / name, name, write_card=False)
        if loaded is None:
            loaded = PiggybackModel.from_pretrained(factory(), folder / name, adapter_name=name)
        else:
            loaded.load_adapter(folder / name, adapter_name=name)
    return loaded.eval()
