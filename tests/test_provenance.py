"""What artifacts record about their base: a checkpoint's name only for that checkpoint's weights.

Random, locally changed and unverifiable bases are recorded under their architecture, with what
their weights are; their cards claim no Hub base model and no ``pretrained=True``, and mismatch
errors name what was recorded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from torch import nn

from pb_adapters import (
    ArtifactError,
    BaseModelMismatchError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.bases import load_base_model
from pb_adapters.card import write_model_card
from pb_adapters.demo_base import DEMO_BASE_MODEL_ID, load_demo_backbone
from pb_adapters.provenance import looks_untrained, mark_pretrained, pretrained_source
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME, read_adapter_config
from tests.factories import tiny_timm, tiny_transformers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def save(model: nn.Module, folder: Path, **config: Any) -> dict[str, Any]:
    """Wrap ``model``, save an adapter with its card into ``folder``; its ``base_model`` record."""
    get_piggyback_model(model, PiggybackConfig(num_labels=3, **config)).save_pretrained(folder)
    return read_adapter_config(folder)["base_model"]


def card(folder: Path) -> tuple[dict[str, Any], str]:
    """The card's metadata and text."""
    loaded = ModelCard.load(folder / "README.md")
    return loaded.data.to_dict(), loaded.text


def bump_one_weight(model: nn.Module) -> None:
    """Change one base weight in place, as a local edit would."""
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1


def with_trained_norms(model: nn.Module) -> nn.Module:
    """Norm scales that vary across channels, as after any training."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------------------- random bases
def test_a_random_timm_model_is_recorded_as_random(tmp_path: Path) -> None:
    # The case that used to be recorded as hf-hub:timm/resnet18.a1_in1k with pretrained=True.
    torch.manual_seed(0)
    base = timm.create_model("resnet18", pretrained=False).eval()
    assert base.pretrained_cfg["hf_hub_id"] == "timm/resnet18.a1_in1k"  # what it used to claim
    record = save(base, tmp_path)
    assert (record["name_or_path"], record["revision"], record["weights"]) == (
        "resnet18",
        None,
        "random",
    )
    assert "checkpoint" not in record
    data, text = card(tmp_path)
    assert "base_model" not in data and "base_model_relation" not in data
    assert 'base = timm.create_model("resnet18", pretrained=False)' in text
    assert "pretrained=True" not in text and "a1_in1k" not in text
    assert "| weights | randomly initialised: no pretrained weights |" in text
    config = read_adapter_config(tmp_path)["config"]
    assert config["base_model_name_or_path"] == "resnet18" and config["base_model_revision"] is None


def test_a_transformers_model_built_from_a_config_is_random(tmp_path: Path) -> None:
    record = save(tiny_transformers("vit"), tmp_path)
    assert record["weights"] == "random"
    assert record["name_or_path"] == record["architecture"] == "ViTForImageClassification"
    data, text = card(tmp_path)
    assert "base_model" not in data and 'from_pretrained("' not in text and "base = ..." in text


def test_a_name_in_the_config_is_not_recorded_for_random_weights(tmp_path: Path) -> None:
    record = save(
        tiny_transformers("vit"),
        tmp_path,
        base_model_name_or_path="org/vit-base",
        base_model_revision="abc123",
    )
    assert (record["name_or_path"], record["revision"]) == ("ViTForImageClassification", None)
    assert record["weights"] == "random" and "org/vit-base" not in json.dumps(record)
    assert "org/vit-base" not in card(tmp_path)[1]


def test_random_bases_are_named_as_such_in_mismatch_errors(tmp_path: Path) -> None:
    save(tiny_timm("test_resnet", seed=0), tmp_path)
    with pytest.raises(BaseModelMismatchError) as err:
        PiggybackModel.from_pretrained(tiny_timm("test_resnet", seed=1), tmp_path)
    message = str(err.value)
    assert "made for a randomly initialised test_resnet (no pretrained weights)" in message
    assert "hf-hub:" not in message and "r160_in1k" not in message


# ---------------------------------------------------------------------------- pretrained bases
def test_the_demo_base_is_recorded_by_its_registered_name(tmp_path: Path) -> None:
    base = load_base_model(DEMO_BASE_MODEL_ID)
    assert pretrained_source(base).name_or_path == DEMO_BASE_MODEL_ID
    record = save(base, tmp_path)
    assert (record["name_or_path"], record["weights"]) == (DEMO_BASE_MODEL_ID, "pretrained")
    assert "base = load_demo_backbone()" in card(tmp_path)[1]
    # Another head (num_classes=2) leaves the fingerprinted weights, and the identity, as they are.
    other = save(load_demo_backbone(num_classes=2), tmp_path / "two")
    assert (other["name_or_path"], other["weights"]) == (DEMO_BASE_MODEL_ID, "pretrained")
    assert other["fingerprint"] == record["fingerprint"]


def test_one_changed_weight_makes_a_pretrained_base_modified(tmp_path: Path) -> None:
    base = load_demo_backbone()
    reference = save(copy.deepcopy(base), tmp_path / "pretrained")
    bump_one_weight(base)
    record = save(base, tmp_path / "modified")
    assert record["weights"] == "modified" and record["fingerprint"] != reference["fingerprint"]
    assert record["name_or_path"] == "tf_efficientnet_lite0"
    assert record["checkpoint"] == DEMO_BASE_MODEL_ID
    data, text = card(tmp_path / "modified")
    assert "base_model" not in data and "load_demo_backbone" not in text
    assert "pretrained=True" not in text
    assert f"changed locally from `{DEMO_BASE_MODEL_ID}`" in text
    with pytest.raises(BaseModelMismatchError) as err:
        PiggybackModel.from_pretrained(DEMO_BASE_MODEL_ID, tmp_path / "modified")
    assert (
        f"made for tf_efficientnet_lite0 with weights changed locally from {DEMO_BASE_MODEL_ID}"
        in str(err.value)
    )


def test_a_copy_of_a_pretrained_base_is_still_pretrained(tmp_path: Path) -> None:
    # New storage (as after .to(device)) is compared by content, not by identity.
    record = save(copy.deepcopy(load_demo_backbone()), tmp_path)
    assert (record["name_or_path"], record["weights"]) == (DEMO_BASE_MODEL_ID, "pretrained")


def test_a_timm_folder_is_recorded_by_its_absolute_path(tmp_path: Path) -> None:
    folder = tmp_path / "timm-weights"
    timm.models.save_for_hf(tiny_timm("test_resnet"), folder, safe_serialization=True)
    expected = f"local-dir:{folder.resolve()}"
    for base in (
        load_base_model(str(folder)),  # marked by the loader
        timm.create_model(f"local-dir:{folder}", pretrained=True),  # compared with the folder
    ):
        record = save(base, tmp_path / "artifact")
        assert (record["name_or_path"], record["weights"]) == (expected, "pretrained")
        data, text = card(tmp_path / "artifact")
        assert "base_model" not in data  # a folder is no Hub id
        assert f'timm.create_model("{expected}", pretrained=True)' in text
    reloaded = PiggybackModel.from_pretrained(expected, tmp_path / "artifact")
    assert reloaded.active_adapter == "default"


@pytest.mark.filterwarnings("ignore:no image processor")
def test_a_transformers_folder_loaded_with_from_pretrained_is_recorded_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForImageClassification

    tiny_transformers("convnext").save_pretrained(tmp_path / "convnext")
    monkeypatch.chdir(tmp_path)  # a relative path, as users type it
    base = AutoModelForImageClassification.from_pretrained("convnext")
    assert pretrained_source(base) is None  # not created by pb-adapters: checked against files
    record = save(base, tmp_path / "artifact")
    expected = str((tmp_path / "convnext").resolve())
    assert (record["name_or_path"], record["weights"]) == (expected, "pretrained")
    data, text = card(tmp_path / "artifact")
    assert "base_model" not in data
    assert f'AutoModelForImageClassification.from_pretrained("{expected}")' in text

    bump_one_weight(base)
    record = save(base, tmp_path / "changed")
    assert record["weights"] == "modified" and record["checkpoint"] == expected
    assert record["name_or_path"] == "ConvNextForImageClassification"


def test_a_pretrained_base_is_named_with_its_revision_in_mismatch_errors(tmp_path: Path) -> None:
    base = mark_pretrained(tiny_timm("test_resnet", seed=2), "hf-hub:org/resnet", revision="v2")
    record = save(base, tmp_path)
    assert (record["name_or_path"], record["revision"]) == ("hf-hub:org/resnet", "v2")
    data, text = card(tmp_path)
    assert data["base_model"] == "org/resnet"
    assert 'timm.create_model("hf-hub:org/resnet@v2", pretrained=True)' in text
    with pytest.raises(BaseModelMismatchError, match="made for hf-hub:org/resnet at revision v2"):
        PiggybackModel.from_pretrained(tiny_timm("test_resnet", seed=3), tmp_path)


# ---------------------------------------------------------------------------- unknown bases
def test_weights_of_unverifiable_origin_are_unknown(tmp_path: Path) -> None:
    base = with_trained_norms(tiny_timm("test_resnet"))
    record = save(base, tmp_path, base_model_name_or_path="org/my-resnet")
    assert (record["name_or_path"], record["weights"]) == ("test_resnet", "unknown")
    assert record["checkpoint"] == "org/my-resnet"
    data, text = card(tmp_path)
    assert "base_model" not in data and "pretrained=True" not in text
    assert "of unverified origin (said to be `org/my-resnet`)" in text
    with pytest.raises(BaseModelMismatchError) as err:
        PiggybackModel.from_pretrained(tiny_timm("test_resnet", seed=4), tmp_path)
    assert (
        "test_resnet with weights of unverified origin; the base was said to be org/my-resnet"
        in (str(err.value))
    )


def test_only_norm_scales_and_shifts_decide_whether_weights_were_trained() -> None:
    model = tiny_timm("test_resnet")  # random running statistics, initial scales and shifts
    assert looks_untrained(model, ["fc"])
    assert not looks_untrained(with_trained_norms(model), ["fc"])
    assert not looks_untrained(nn.Sequential(nn.Linear(4, 4)), [])  # no norms: no evidence


# ---------------------------------------------------------------------------- older artifacts
def test_artifacts_without_a_weights_record_still_load(tmp_path: Path) -> None:
    save(tiny_timm("test_resnet"), tmp_path)
    path = tmp_path / ARTIFACT_CONFIG_NAME
    data = json.loads(path.read_text())
    del data["base_model"]["weights"]
    data["base_model"]["name_or_path"] = "hf-hub:timm/test_resnet.r160_in1k"  # as recorded then
    path.write_text(json.dumps(data))
    reloaded = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)
    assert reloaded.active_adapter == "default"
    text = write_model_card(tmp_path).read_text()
    assert "not recorded (an artifact written before pb-adapters recorded it)" in text
    assert "pretrained=True" not in text and "base_model:" not in text
    with pytest.raises(
        BaseModelMismatchError, match=r"made for hf-hub:timm/test_resnet\.r160_in1k"
    ):
        PiggybackModel.from_pretrained(tiny_timm("test_resnet", seed=1), tmp_path)

    data["base_model"]["weights"] = "fine-tuned"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"'base_model\.weights' must be one of"):
        read_adapter_config(tmp_path)
