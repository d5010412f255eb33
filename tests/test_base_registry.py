"""Named bases: registered names create their base, and model cards show how to build it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pb_adapters import (
    ConfigError,
    PiggybackConfig,
    PiggybackModel,
    base_registry,
    get_piggyback_model,
)
from pb_adapters.base_registry import (
    BaseSpec,
    get_base,
    is_registered_base,
    register_base,
    registered_bases,
)
from pb_adapters.bases import load_base_model
from pb_adapters.card import write_model_card
from pb_adapters.serialization import read_adapter_config
from tests.factories import tiny_timm

NAME = "my-lab:tiny-resnet"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(base_registry, "_REGISTRY", dict(base_registry._REGISTRY))


def _tiny() -> torch.nn.Module:
    return tiny_timm("test_resnet", seed=3).train()  # the same weights on every call


def test_a_registered_name_creates_its_base_in_eval_mode(registry: None) -> None:
    assert not is_registered_base(NAME)
    register_base(BaseSpec(NAME, _tiny))
    assert is_registered_base(NAME) and NAME in registered_bases()
    model = load_base_model(f"  {NAME} ")
    reference = _tiny()
    assert not model.training
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_an_adapter_on_a_registered_base_reloads_by_name(registry: None, tmp_path: Path) -> None:
    register_base(BaseSpec(NAME, _tiny))
    model = get_piggyback_model(load_base_model(NAME), PiggybackConfig(num_labels=3))
    model.save_pretrained(tmp_path)
    reloaded = PiggybackModel.from_pretrained(NAME, tmp_path)  # fingerprint checked
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(reloaded(x), model.eval()(x))
    card = (tmp_path / "README.md").read_text()
    assert "from pb_adapters.bases import load_base_model" in card
    assert f"base = load_base_model('{NAME}')" in card and "timm.create_model" not in card


def test_custom_card_snippet(registry: None, tmp_path: Path) -> None:
    register_base(
        BaseSpec(
            NAME, _tiny, card_imports=("from my_lab import tiny",), card_code=("base = tiny()",)
        )
    )
    config = PiggybackConfig(num_labels=2)
    get_piggyback_model(load_base_model(NAME), config).save_pretrained(tmp_path, write_card=False)
    text = write_model_card(tmp_path).read_text()
    assert (
        "from my_lab import tiny\nfrom pb_adapters import PiggybackModel\n\nbase = tiny()" in text
    )


def test_a_registered_name_is_not_recorded_for_weights_it_did_not_create(
    registry: None, tmp_path: Path
) -> None:
    # The loader function called directly leaves no mark: naming the base in the config claims
    # nothing the weights bear out (they are at their initial values), so the name is not kept.
    register_base(BaseSpec(NAME, _tiny))
    config = PiggybackConfig(num_labels=2, base_model_name_or_path=NAME)
    get_piggyback_model(_tiny(), config).save_pretrained(tmp_path)
    recorded = read_adapter_config(tmp_path)
    assert recorded["base_model"]["name_or_path"] == "test_resnet"
    assert recorded["base_model"]["weights"] == "random"
    assert recorded["config"]["base_model_name_or_path"] == "test_resnet"
    assert "base = tiny()" not in (tmp_path / "README.md").read_text()


def test_unknown_and_invalid_names_are_refused(registry: None) -> None:
    with pytest.raises(ConfigError, match="unknown base 'nope'"):
        get_base("nope")
    for bad in ("", " padded ", None):
        with pytest.raises(ConfigError, match="base name"):
            register_base(BaseSpec(bad, _tiny))  # type: ignore[arg-type]
    assert not is_registered_base(None)
