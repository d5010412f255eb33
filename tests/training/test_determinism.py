"""Deterministic algorithms on and off again, and seeded data-loader workers."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pb_adapters.training.determinism import (
    CUBLAS_WORKSPACE_CONFIG,
    CUBLAS_WORKSPACE_VARIABLE,
    deterministic,
    enable_determinism,
    loader_generator,
)


def _settings() -> tuple:
    cudnn = torch.backends.cudnn
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get(CUBLAS_WORKSPACE_VARIABLE),
    )


@pytest.fixture
def loose(monkeypatch: pytest.MonkeyPatch):
    """Start from non-default settings (warn-only determinism, cuDNN benchmarking, no workspace
    variable), so that restoring them is not restoring the defaults; put the defaults back after."""
    monkeypatch.delenv(CUBLAS_WORKSPACE_VARIABLE, raising=False)
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = False, True
    yield _settings()
    torch.use_deterministic_algorithms(False)
    cudnn.deterministic, cudnn.benchmark = saved


def test_enable_then_undo_restores_every_setting(loose: tuple) -> None:
    assert loose == (True, True, False, True, None)
    undo = enable_determinism()
    assert _settings() == (True, False, True, False, CUBLAS_WORKSPACE_CONFIG)
    # warn_only=False: an operation without a deterministic implementation refuses to run
    with pytest.raises(RuntimeError, match="deterministic"):
        torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))
    undo()
    assert _settings() == loose


def test_the_context_restores_after_an_error_and_keeps_a_set_workspace(
    loose: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CUBLAS_WORKSPACE_VARIABLE, ":16:8")  # the other deterministic setting
    before = _settings()
    with pytest.raises(KeyError), deterministic():
        assert _settings()[:4] == (True, False, True, False)
        assert os.environ[CUBLAS_WORKSPACE_VARIABLE] == ":16:8"
        raise KeyError("inside")
    assert _settings() == before
    with deterministic(enabled=False):
        assert _settings() == before


def test_a_training_step_repeats_bit_for_bit(device: torch.device) -> None:
    """Two identical steps on the suite's device (CUDA with PB_TEST_DEVICE=cuda) match exactly."""

    def step() -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
        ).to(device)
        x = torch.randn(16, 3, 24, 24, device=device)
        loss = nn.functional.cross_entropy(net(x), torch.arange(16, device=device) % 4)
        loss.backward()
        return [p.grad.cpu() for p in net.parameters()]

    with deterministic():
        first, second = step(), step()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


class _Draws(Dataset):
    """Each item: the worker's next Python, NumPy and torch random numbers, and its id."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float, float, int]:
        info = torch.utils.data.get_worker_info()
        return random.random(), float(np.random.rand()), torch.rand(()).item(), info.id


def _draw(seed: int) -> list[tuple[float, float, float, int]]:
    loader = DataLoader(_Draws(), batch_size=None, num_workers=2, generator=loader_generator(seed))
    return [(float(a), float(b), float(c), int(worker)) for a, b, c, worker in loader]


def test_seeded_workers_repeat_and_differ_from_each_other() -> None:
    state = torch.get_rng_state()
    first = _draw(7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not drawn from
    assert first == _draw(7)
    assert first != _draw(8)
    by_worker = {worker: draws for *draws, worker in first}
    assert len(by_worker) == 2
    a, b = by_worker.values()
    # torch seeds each worker's Python, NumPy and torch generators from the base seed: no
    # worker_init_fn is needed for them to differ (forked workers would otherwise share them)
    assert all(x != y for x, y in zip(a, b, strict=True))
