"""PEFT's habits on the wrapper: names, accessors and errors a PEFT user expects."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import ConfigError, PiggybackConfig, PiggybackModel, get_piggyback_model
from tests.factories import call, tiny_timm, tiny_transformers


def test_peft_config_keyword_where_peft_takes_it():
    config = PiggybackConfig(num_labels=3)
    x = torch.randn(2, 3, 32, 32)
    by_position = get_piggyback_model(tiny_timm(), config).eval()
    by_keyword = get_piggyback_model(tiny_timm(), peft_config=config).eval()
    constructed = PiggybackModel(tiny_timm(), config).eval()  # as PeftModel(model, peft_config)
    assert constructed.active_adapter == "default"
    assert torch.equal(call(by_position, x), call(by_keyword, x))
    assert torch.equal(call(by_position, x), call(constructed, x))
    by_keyword.add_adapter("other", peft_config=PiggybackConfig(num_labels=2))
    assert list(by_keyword.peft_config) == ["default", "other"]
    with pytest.raises(ConfigError, match="once"):
        get_piggyback_model(tiny_timm(), config, peft_config=config)
    with pytest.raises(ConfigError, match="required"):
        get_piggyback_model(tiny_timm())


def test_get_base_model_and_active_adapters():
    base = tiny_timm()
    wrapped = get_piggyback_model(base, PiggybackConfig(num_labels=3))
    assert wrapped.get_base_model() is base is wrapped.base_model
    assert wrapped.active_adapters == ["default"]
    wrapped.add_adapter("other", PiggybackConfig(num_labels=2))
    wrapped.set_adapter("other")
    assert wrapped.active_adapters == ["other"]
    wrapped.delete_adapter("other")
    wrapped.delete_adapter("default")
    assert wrapped.active_adapters == []


@pytest.mark.parametrize("make", [tiny_timm, tiny_transformers], ids=["timm", "transformers"])
def test_missing_attribute_error_names_the_wrapper(make):
    wrapped = get_piggyback_model(make(), PiggybackConfig(num_labels=3))
    with pytest.raises(AttributeError, match=r"^'PiggybackModel' object has no attribute 'nope'$"):
        _ = wrapped.nope
    assert not hasattr(wrapped, "nope")
    # Attributes of the base still read through.
    if hasattr(wrapped.base_model, "config"):
        assert wrapped.config is wrapped.base_model.config
    else:
        assert wrapped.num_classes == 3
