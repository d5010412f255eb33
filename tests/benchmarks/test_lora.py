"""The LoRA reference of the accuracy benchmark: targets, adapter bytes, training, refusal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import lora


class TinyNet(nn.Module):
    """A conv, a depthwise conv, a norm and a classifier: what LoRA must and must not adapt."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.dw(self.conv(x))).mean((2, 3))
        return self.classifier(x)


def test_targets_skip_depthwise_convolutions_and_the_head() -> None:
    assert lora.lora_targets(TinyNet(), "classifier") == ["conv"]


def test_adapter_bytes_is_the_saved_file_and_holds_the_head(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = lora.wrap_lora(TinyNet(), 2, "classifier")
    size = lora.adapter_bytes(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    assert size == path.stat().st_size
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k and ".conv." in k for k in keys)
    assert any("classifier" in k for k in keys)
    assert not any(".dw." in k for k in keys)
    bigger = lora.adapter_bytes(lora.wrap_lora(TinyNet(), 8, "classifier"), tmp_path / "r8")
    assert bigger > size  # the rank is in the bytes


def test_fit_trains_lora_keeps_norms_frozen_and_restores_the_best_epoch() -> None:
    torch.manual_seed(0)
    model = lora.wrap_lora(TinyNet(), 2, "classifier")
    images, labels = torch.randn(16, 3, 8, 8), torch.arange(16) % 3
    batches = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    stats = model.base_model.model.bn.running_mean.clone()
    result = lora.fit(model, {"train": batches, "validation": batches, "test": batches}, 2, 1e-2)
    assert 1 <= result["best_epoch"] <= 2
    assert result["validation_accuracy"] == lora.accuracy(model, batches)
    assert torch.equal(model.base_model.model.bn.running_mean, stats)
    assert result["step_seconds"] > 0


def test_missing_peft_is_refused_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(lora.MissingBenchmarkDependency, match=r"pb-adapters\[benchmarks\]"):
        lora.require_peft()
