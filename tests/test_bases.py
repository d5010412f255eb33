"""``pb_adapters.bases``: which library creates a named base, local folders, clear errors.

Everything here is offline (``HF_HUB_OFFLINE=1`` from the test configuration); creating bases
from the (local) Hub is tested in ``test_hub_models.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from torch import Tensor, nn

from pb_adapters import HubError, PbAdaptersError, PiggybackConfig, PiggybackModel
from pb_adapters import get_piggyback_model as wrap
from pb_adapters.bases import guess_library, load_base_model
from tests.factories import logits, tiny_timm, tiny_transformers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def outputs(model: nn.Module, x: Tensor) -> Tensor:
    """Eval-mode logits without gradients."""
    with torch.no_grad():
        return logits(model.eval()(x))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny timm model saved in timm's Hub format (config.json + model.safetensors)."""
    folder = tmp_path_factory.mktemp("timm-base")
    timm.models.save_for_hf(tiny_timm("test_resnet", seed=0), folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers ViT saved with ``save_pretrained``."""
    folder = tmp_path_factory.mktemp("vit-base")
    tiny_transformers("vit", seed=0).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------- guessing
@pytest.mark.parametrize(
    ("name", "library"),
    [
        ("hf-hub:timm/resnet50.a1_in1k", "timm"),
        ("hf_hub:timm/resnet50.a1_in1k", "timm"),
        ("hf-hub:org/model@v2", "timm"),
        ("local-dir:/somewhere/model", "timm"),
        ("resnet50", "timm"),
        ("resnet50.a1_in1k", "timm"),
        ("tf_efficientnet_lite0", "timm"),
        ("google/vit-base-patch16-224", "transformers"),
        ("microsoft/resnet-50", "transformers"),
        ("resnet5O", "transformers"),
    ],
)
def test_guess_library_from_names(name: str, library: str) -> None:
    assert guess_library(name) == library


def test_guess_library_from_folders(timm_folder: Path, vit_folder: Path, tmp_path: Path) -> None:
    assert guess_library(str(timm_folder)) == "timm"
    assert guess_library(str(vit_folder)) == "transformers"
    assert guess_library(str(tmp_path)) == "transformers"  # no config.json: transformers says so
    (tmp_path / "resnet50").mkdir()  # a folder wins over a registry name of the same spelling
    (tmp_path / "resnet50" / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    assert guess_library(str(tmp_path / "resnet50")) == "transformers"


# ---------------------------------------------------------------------------- local folders
def test_timm_folder_and_local_dir_give_the_saved_weights(timm_folder: Path) -> None:
    reference = tiny_timm("test_resnet", seed=0)
    x = torch.randn(2, 3, 32, 32)
    for name in (str(timm_folder), f"local-dir:{timm_folder}", timm_folder):
        model = load_base_model(name, revision="ignored-for-folders")  # type: ignore[arg-type]
        assert not model.training and same_weights(model, reference)
        assert torch.equal(outputs(model, x), outputs(reference, x))
        assert model.pretrained_cfg["architecture"] == "test_resnet"


def test_transformers_folder_gives_the_saved_weights(vit_folder: Path) -> None:
    reference = tiny_transformers("vit", seed=0)
    model = load_base_model(str(vit_folder))
    assert type(model).__name__ == "ViTForImageClassification" and not model.training
    assert same_weights(model, reference)
    # No Hub commit is known for a folder, so none is invented.
    assert getattr(model.config, "_commit_hash", None) is None


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_from_pretrained_with_a_folder_named_base_round_trips(
    kind: str, timm_folder: Path, vit_folder: Path, tmp_path: Path
) -> None:
    folder = timm_folder if kind == "timm" else vit_folder
    x = torch.randn(2, 3, 32, 32)
    model = wrap(load_base_model(str(folder)), PiggybackConfig(num_labels=3))
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            scores = layer.mask_scores["default"]
            scores.copy_(torch.where(torch.rand(scores.shape) < 0.1, 0.0, 1e-2))
    expected = outputs(model, x)
    model.save_pretrained(tmp_path / "artifact", write_card=False)
    reloaded = PiggybackModel.from_pretrained(str(folder), tmp_path / "artifact")
    assert reloaded.family == kind
    assert torch.equal(outputs(reloaded, x), expected)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_the_name_must_be_a_non_empty_string(name: object) -> None:
    with pytest.raises(PbAdaptersError, match="non-empty string"):
        load_base_model(name)  # type: ignore[arg-type]


def test_unknown_library_and_plain_torch_models_are_refused() -> None:
    with pytest.raises(PbAdaptersError, match="unknown library 'keras'"):
        load_base_model("resnet50", library="keras")
    with pytest.raises(PbAdaptersError, match=r"plain PyTorch model.*pass the model object"):
        load_base_model("MyNet", library="torch")


def test_two_different_revisions_are_refused() -> None:
    with pytest.raises(PbAdaptersError, match="names revision 'v1' but revision 'v2'"):
        load_base_model("hf-hub:org/model@v1", revision="v2")


def test_a_registry_name_without_hub_repo_cannot_take_a_revision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("timm.models.get_pretrained_cfg", lambda name: None)
    with pytest.raises(PbAdaptersError, match=r"no Hub repository.*hf-hub:"):
        load_base_model("test_resnet", revision="v2")


@pytest.mark.parametrize("name", ["./no-such-folder", "~/no/such/folder", "/no/such/folder"])
def test_missing_folders_are_named(name: str) -> None:
    with pytest.raises(PbAdaptersError, match=r"folder .* does not exist"):
        load_base_model(name)


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(PbAdaptersError, match="is a file, not a model folder"):
        load_base_model(str(tmp_path / "weights.bin"))


def test_misspelt_timm_name_suggests_close_names() -> None:
    with pytest.raises(PbAdaptersError) as err:
        load_base_model("resnet5O")
    message = str(err.value)
    assert "not in timm's registry (did you mean resnet50" in message
    assert "transformers could not load it" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    assert isinstance(err.value.__cause__, Exception)  # the library's error is chained


def test_invalid_timm_tag_is_a_pb_adapters_error() -> None:
    with pytest.raises(PbAdaptersError, match=r"'resnet50\.bogus': timm could not create it.*tag"):
        load_base_model("resnet50.bogus")


@pytest.mark.parametrize(
    ("name", "library", "where"),
    [
        ("hf-hub:org/not-cached", None, "org/not-cached"),
        ("org/not-cached", "timm", "org/not-cached"),  # recorded as timm, given without prefix
        ("test_resnet", None, "timm/test_resnet.r160_in1k"),  # the registry's Hub repo
        ("org/not-cached", None, "org/not-cached"),
    ],
)
def test_offline_without_cache_says_so(name: str, library: str | None, where: str) -> None:
    with pytest.raises(HubError, match="HF_HUB_OFFLINE") as err:
        load_base_model(name, library=library)
    assert where in str(err.value) and name in str(err.value)


def test_from_pretrained_with_an_unknown_base_name(tmp_path: Path) -> None:
    wrap(tiny_timm(), PiggybackConfig(num_labels=3)).save_pretrained(tmp_path, write_card=False)
    with pytest.raises(PbAdaptersError, match="did you mean"):
        PiggybackModel.from_pretrained("resnet5O", tmp_path)


def test_demo_backbone_id_creates_the_shipped_backbone(tmp_path: Path) -> None:
    from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
    from pb_adapters.demo_base import DEMO_BASE_MODEL_ID, load_demo_backbone

    model = get_piggyback_model(
        load_demo_backbone(),
        PiggybackConfig(num_labels=2, base_model_name_or_path=DEMO_BASE_MODEL_ID),
    )
    model.save_pretrained(tmp_path, write_card=False)
    reloaded = PiggybackModel.from_pretrained(DEMO_BASE_MODEL_ID, tmp_path)  # fingerprint checked
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(reloaded(x), model.eval()(x))
