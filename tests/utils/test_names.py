"""Base-model names: revisions and timm's two spellings of its Hub prefix."""

from __future__ import annotations

import pytest

from pb_adapters.utils.names import normalize_base_name, split_revision


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf-hub:timm/resnet18.a1_in1k@v2", ("hf-hub:timm/resnet18.a1_in1k", "v2")),
        ("org/model", ("org/model", None)),
        ("org/model@", ("org/model", "")),
    ],
)
def test_split_revision(name: str, expected: tuple[str, str | None]) -> None:
    assert split_revision(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf_hub:timm/resnet18.a1_in1k@abc", "hf-hub:timm/resnet18.a1_in1k"),
        ("hf-hub:timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k"),
        ("resnet18.a1_in1k", "resnet18.a1_in1k"),
        ("google/vit-base-patch16-224@main", "google/vit-base-patch16-224"),
    ],
)
def test_normalize_base_name(name: str, expected: str) -> None:
    assert normalize_base_name(name) == expected
