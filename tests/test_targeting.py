"""Which modules get masks, and the errors for modules that cannot."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import PiggybackConfig, TargetingError, get_piggyback_model
from pb_adapters.targeting import (
    find_head_paths,
    is_norm_layer,
    is_transformers_model,
    iter_base_tensors,
    model_family,
    resolve_target_modules,
)
from tests.factories import tiny_timm, tiny_transformers


def test_head_paths_from_model_metadata():
    assert find_head_paths(tiny_timm("test_resnet")) == ["fc"]
    assert find_head_paths(tiny_timm("test_convnext")) == ["head.fc"]
    assert find_head_paths(tiny_transformers("vit")) == ["classifier"]
    assert find_head_paths(tiny_transformers("resnet")) == ["classifier.1"]


def test_names_suffixes_regex_and_excludes():
    model = tiny_timm("test_vit")
    assert resolve_target_modules(model, ["qkv"]) == [
        f"blocks.{i}.attn.qkv" for i in range(len(model.blocks))
    ]
    regex = resolve_target_modules(model, r"blocks\.0\..*fc\d")
    assert regex == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    everything = resolve_target_modules(model)
    without_attn = resolve_target_modules(model, exclude_modules=r".*attn.*")
    assert without_attn and not any("attn" in n for n in without_attn)
    assert set(without_attn) < set(everything)


def test_unsupported_type_names_module_and_type():
    model = tiny_timm("test_resnet")
    with pytest.raises(TargetingError, match=r"'bn1' of type BatchNorm"):
        resolve_target_modules(model, ["bn1"])


def test_head_and_nothing_matched_are_refused():
    model = tiny_timm("test_resnet")
    with pytest.raises(TargetingError, match="classifier head"):
        resolve_target_modules(model, ["fc"])
    with pytest.raises(TargetingError, match="matches no module"):
        resolve_target_modules(model, ["does_not_exist"])
    with pytest.raises(TargetingError, match="no module"):
        resolve_target_modules(model, exclude_modules=r".*")


def test_norm_detection_includes_custom_norms():
    assert is_norm_layer(torch.nn.BatchNorm2d(3)) and is_norm_layer(torch.nn.LayerNorm(3))
    convnext = tiny_transformers("convnext")
    assert any(
        is_norm_layer(m) and type(m).__name__ == "ConvNextLayerNorm" for m in convnext.modules()
    )
    assert not is_norm_layer(torch.nn.Linear(2, 2))


def test_wrapping_twice_reuses_layers():
    wrapped = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig())
    first = resolve_target_modules(wrapped.base_model)
    wrapped.add_adapter("second", PiggybackConfig())
    assert resolve_target_modules(wrapped.base_model) == first
    assert all(
        set(layer.adapter_names) == {"default", "second"} for _, layer in wrapped.adapter_layers()
    )


def test_model_family_and_is_transformers_model():
    vit, resnet = tiny_transformers("vit"), tiny_timm("test_resnet")
    assert is_transformers_model(vit) and model_family(vit) == "transformers"
    assert not is_transformers_model(resnet) and model_family(resnet) == "timm"
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert not is_transformers_model(plain) and model_family(plain) == "torch"


def test_base_tensors_of_a_wrapped_model_are_the_plain_models():
    base = tiny_timm("test_resnet")
    plain = [(name, tensor.clone()) for name, tensor in iter_base_tensors(base, skip=["fc"])]
    wrapped = get_piggyback_model(base, PiggybackConfig(num_labels=3))
    items = list(iter_base_tensors(wrapped.base_model, skip=["fc"]))
    assert [name for name, _ in items] == [name for name, _ in plain]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(items, plain, strict=True))
    assert not any(name.startswith("fc.") or "num_batches_tracked" in name for name, _ in items)
