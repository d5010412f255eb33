"""Helpers shared by the PackNet tests: tiny tasks trained with the optimisers PackNet meets."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import PackNetConfig, PiggybackModel
from pb_adapters.methods.packnet import finalize_task, prune_task
from tests.factories import call, tiny_timm


def train(model, x, y, optimizer: str = "sgd", steps: int = 3) -> None:
    """A few steps on the active task: SGD with momentum and weight decay, or Adam with decay."""
    params = [p for group in model.parameter_groups().values() for p in group]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2)
    else:
        opt = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(call(model, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def add_task(model, name, x, y, *, optimizer="sgd", ratio=0.75, num_labels=3, prune=True):
    """Train, prune, retrain and pack one task (the PackNet schedule in miniature)."""
    model.add_adapter(name, PackNetConfig(num_labels=num_labels, prune_ratio=ratio))
    model.set_adapter(name)
    train(model, x, y, optimizer)
    if prune:
        prune_task(model, name)
        train(model, x, y, optimizer, steps=2)
    finalize_task(model, name)


@pytest.fixture(scope="module")
def batch():
    """Four 32 px images and labels for three tasks."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    return x, torch.tensor([0, 1, 2, 0])


@pytest.fixture(scope="module")
def packed(batch):
    """A tiny resnet with three packed tasks: t1, t2 (SGD with momentum) and t3 (Adam)."""
    x, y = batch
    model = PiggybackModel(tiny_timm())
    for name, optimizer in (("t1", "sgd"), ("t2", "sgd"), ("t3", "adam")):
        add_task(model, name, x, y, optimizer=optimizer)
    return model
