"""The layer base class's eval-mode weight cache, and switching it off (sharded training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pb_adapters import KSMConfig, PiggybackConfig
from pb_adapters.methods.ksm.layer import KSMLayer
from pb_adapters.methods.piggyback.layer import PiggybackLayer


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "ksm":  # eval computes with the hardened weight, training with the relaxed one
        layer = KSMLayer(nn.Conv2d(4, 6, 3))
        layer.add_adapter("task", KSMConfig())
    else:
        layer = PiggybackLayer(nn.Conv2d(4, 6, 3))
        layer.add_adapter("task", PiggybackConfig())
    layer.set_adapter("task")
    with torch.no_grad():
        scores = layer.mask_scores["task"]
        scores.add_(0.05 * torch.randn(scores.shape))
    return layer


@pytest.mark.parametrize("kind", ["piggyback", "ksm"])
def test_without_the_cache_eval_computes_the_same_output_and_keeps_no_weight(kind):
    cached, uncached = _layer(kind), _layer(kind)
    uncached.set_merged_cache(False)
    x = torch.randn(2, 4, 8, 8)
    for layer in (cached, uncached):
        layer.eval()
    with torch.no_grad():
        expected = cached(x)
        assert cached.merged_weight is not None
        assert torch.equal(uncached(x), expected)
    assert uncached.merged_weight is None
    # the scores change (an optimiser step): the next forward follows
    with torch.no_grad():
        for layer in (cached, uncached):
            layer.mask_scores["task"].mul_(-1)
        assert torch.equal(uncached(x), cached(x))
        assert not torch.equal(uncached(x), expected)
    assert uncached.merged_weight is None


def test_switching_the_cache_back_on_materialises_the_weight():
    layer = _layer("piggyback").eval()
    assert layer.merged_weight is not None
    layer.set_merged_cache(False)
    assert layer.merged_weight is None
    layer.set_merged_cache(True)
    assert torch.equal(layer.merged_weight, layer.inference_weight("task"))
