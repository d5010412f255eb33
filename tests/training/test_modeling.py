"""What the trainer sees under the wrappers, and how it calls the model."""

from __future__ import annotations

import torch
from torch import nn

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.training.modeling import forward_logits, inner_model, uses_pixel_values
from tests.factories import tiny_timm, tiny_transformers


class DistributedDataParallel(nn.Module):  # named like torch's: unwrapped by name
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_inner_model_sees_through_adapter_parallel_and_compile_wrappers() -> None:
    vit = tiny_transformers("vit")
    wrapped = get_piggyback_model(vit, PiggybackConfig(num_labels=3))
    assert inner_model(DistributedDataParallel(wrapped)) is vit
    assert uses_pixel_values(wrapped) and uses_pixel_values(DistributedDataParallel(wrapped))
    compiled = nn.Module()
    compiled._orig_mod = wrapped  # what torch.compile's wrapper holds
    assert inner_model(compiled) is vit
    # a transformers model is not unwrapped into its own backbone (its base_model property)
    assert inner_model(vit) is vit and vit.base_model is not vit
    timm_model = tiny_timm("test_resnet")
    assert inner_model(get_piggyback_model(timm_model, PiggybackConfig())) is timm_model
    assert not uses_pixel_values(timm_model)


def test_forward_logits_for_both_apis() -> None:
    x = torch.randn(2, 3, 32, 32)
    vit = tiny_transformers("vit").eval()
    assert forward_logits(vit, x, transformers_api=True).shape == (2, 5)
    timm_model = tiny_timm("test_resnet").eval()
    assert forward_logits(timm_model, x, transformers_api=False).shape[0] == 2
