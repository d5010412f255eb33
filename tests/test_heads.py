"""Heads that cannot be rebuilt for a new number of classes: a clear error, and the way around it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pb_adapters import PiggybackConfig, TargetingError, get_piggyback_model


class _Net(nn.Module):
    def __init__(self, head: nn.Module | None) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        if head is not None:
            self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        return self.head(x).mean((2, 3)) if hasattr(self, "head") else x.mean((2, 3))


def test_a_head_that_cannot_be_resized_names_the_fix() -> None:
    torch.manual_seed(0)
    model = _Net(nn.Conv2d(8, 5, 3)).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    with pytest.raises(TargetingError, match=r"'head' is a \(3, 3\) convolution.*num_labels unset"):
        get_piggyback_model(model, PiggybackConfig(num_labels=3))
    wrapped = get_piggyback_model(model, PiggybackConfig())  # the task trains a copy instead
    assert torch.equal(wrapped(x), expected)
    assert wrapped.parameter_groups()["head"]


def test_a_model_without_a_head_refuses_num_labels() -> None:
    with pytest.raises(TargetingError, match="ForImageClassification"):
        get_piggyback_model(_Net(None), PiggybackConfig(num_labels=3))
    assert get_piggyback_model(_Net(None), PiggybackConfig()).head_paths == []
