"""save_pretrained(selected_adapters=...): several adapters in PEFT's folder layout."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import (
    AdapterNotFoundError,
    ConfigError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME
from tests.factories import call, tiny_timm, train_steps


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _three_tasks() -> PiggybackModel:
    wrapped = get_piggyback_model(tiny_timm(), PiggybackConfig(num_labels=3))
    for name in ("cars", "birds"):
        wrapped.add_adapter(name, PiggybackConfig(num_labels=2))
        wrapped.set_adapter(name)
        train_steps(wrapped, _images(), torch.tensor([0, 1, 1, 0]))
    return wrapped.eval()


def test_every_adapter_saved_in_peft_layout_and_loaded_back(tmp_path):
    wrapped = _three_tasks()
    root = wrapped.save_pretrained(tmp_path / "all", selected_adapters=list(wrapped.peft_config))
    assert (root / ARTIFACT_CONFIG_NAME).is_file()  # "default" at the root
    assert (root / "cars" / ARTIFACT_CONFIG_NAME).is_file()
    assert (root / "birds" / ARTIFACT_CONFIG_NAME).is_file()
    loaded = PiggybackModel.from_pretrained(tiny_timm(), root)
    for name in ("cars", "birds"):
        loaded.load_adapter(root, name, subfolder=name)
    x = _images()
    for name in ("default", "cars", "birds"):
        wrapped.set_adapter(name)
        loaded.set_adapter(name)
        assert torch.equal(call(loaded, x), call(wrapped, x))


def test_selected_adapters_only(tmp_path):
    wrapped = _three_tasks()
    wrapped.save_pretrained(tmp_path, selected_adapters=["birds"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["birds"]


def test_bad_selection_refused_before_writing(tmp_path):
    wrapped = _three_tasks()
    with pytest.raises(AdapterNotFoundError, match="nope"):
        wrapped.save_pretrained(tmp_path, selected_adapters=["cars", "nope"])
    with pytest.raises(ConfigError, match="once"):
        wrapped.save_pretrained(tmp_path, selected_adapters=["cars", "cars"])
    with pytest.raises(ConfigError, match="not both"):
        wrapped.save_pretrained(tmp_path, "cars", selected_adapters=["cars"])
    with pytest.raises(ConfigError, match="record_metrics"):
        wrapped.save_pretrained(
            tmp_path, selected_adapters=["cars", "birds"], metrics={"accuracy": 1.0}
        )
    assert list(tmp_path.iterdir()) == []
