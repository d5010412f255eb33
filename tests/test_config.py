"""The config base class: validation, label handling and the JSON round trip."""

from __future__ import annotations

import pytest

from pb_adapters import AdapterConfig, ConfigError, PiggybackConfig


def test_round_trip_through_dict_and_file(tmp_path):
    config = PiggybackConfig(
        id2label={0: "a", 1: "b"}, target_modules=["conv1"], mask_type="ternary"
    )
    data = config.to_dict()
    assert data["method"] == "piggyback" and data["id2label"] == {"0": "a", "1": "b"}
    assert AdapterConfig.from_dict(data) == config
    config.save(tmp_path / "c.json")
    assert PiggybackConfig.load(tmp_path / "c.json") == config


def test_labels_derive_num_labels_and_label2id():
    config = PiggybackConfig(id2label={"1": "dog", "0": "cat"})
    assert config.num_labels == 2 and config.id2label == {0: "cat", 1: "dog"}
    assert config.label2id == {"cat": 0, "dog": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_labels": 0}, "num_labels"),
        ({"num_labels": True}, "num_labels"),
        ({"id2label": {0: "a", 2: "b"}}, "without gaps"),
        ({"id2label": {"x": "a"}}, "integers"),
        ({"num_labels": 3, "id2label": {0: "a"}}, "entries"),
        ({"target_modules": 3}, "target_modules"),
        ({"threshold": "high"}, "threshold"),
        ({"mask_init": 1e-3}, "above threshold"),
        ({"mask_type": "quaternary"}, "mask_type"),
        ({"mask_lr": -1.0}, "mask_lr"),
        ({"train_norms": "yes"}, "train_norms"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PiggybackConfig(**kwargs)


def test_from_dict_refuses_unknown_fields_and_methods():
    data = PiggybackConfig().to_dict()
    with pytest.raises(ConfigError, match="unknown field"):
        AdapterConfig.from_dict({**data, "surprise": 1})
    with pytest.raises(ConfigError, match="unknown adapter method 'lora'"):
        AdapterConfig.from_dict({**data, "method": "lora"})
    with pytest.raises(ConfigError, match="JSON object"):
        AdapterConfig.from_dict(["not", "a", "dict"])
