"""Base models named by string, created from the local Hub server, under pushed adapters.

Every base here is uploaded to the local Hub server in its library's own format (transformers:
``save_pretrained``; timm: ``timm.models.save_for_hf``), created from there by
:func:`pb_adapters.bases.load_base_model` (through ``huggingface_hub``, which the ``hub`` fixture
points at the server), and must give exactly the outputs the adapter was trained with. Wrong
bases must be refused by fingerprint, naming the base the adapter expects, and leave the model
as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from torch import Tensor, nn

from pb_adapters import (
    BaseModelMismatchError,
    HubError,
    PbAdaptersError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.bases import load_base_model
from pb_adapters.methods.base import AdapterLayer
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME
from tests import hub_server as local_hub
from tests.factories import logits, tiny_timm, tiny_transformers
from tests.hub_server import LocalHub

# The local Hub server's fixtures (tests/hub_server.py), for this module's tests.
hub = local_hub.hub
hub_server = local_hub.hub_server

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NUM_LABELS = 3
VIT_INPUT = (4, 3, 32, 32)
RESNET_INPUT = (4, 3, 32, 32)


# ---------------------------------------------------------------------------- helpers
def train_briefly(model: PiggybackModel, x: Tensor, steps: int = 2) -> PiggybackModel:
    """A few real optimisation steps (straight-through masks, head): some mask bits turn off."""
    params = [p for group in model.parameter_groups().values() for p in group]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    target = torch.arange(x.shape[0]) % NUM_LABELS
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(logits(model(x)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert model.mask_stats().zeros > 0
    return model


def outputs(model: nn.Module, x: Tensor) -> Tensor:
    """Eval-mode logits without gradients."""
    with torch.no_grad():
        return logits(model.eval()(x))


def upload_folder(hub: LocalHub, repo_id: str, folder: Path, revision: str | None = None) -> str:
    """Upload ``folder`` as a model repo (creating the repo / branch); return the commit id."""
    api = HfApi(token=hub.token)
    api.create_repo(repo_id, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision).oid


def push_transformers_base(
    hub: LocalHub, repo_id: str, tmp_path: Path, seed: int, revision: str | None = None
) -> str:
    """A tiny ViT in transformers' format on the server; returns the commit id."""
    folder = tmp_path / f"vit-{seed}"
    tiny_transformers("vit", seed=seed).save_pretrained(folder)
    return upload_folder(hub, repo_id, folder, revision)


def push_timm_base(
    hub: LocalHub,
    repo_id: str,
    tmp_path: Path,
    seed: int,
    revision: str | None = None,
    num_classes: int = 7,
) -> str:
    """A tiny timm ResNet in timm's Hub format (config.json + model.safetensors)."""
    folder = tmp_path / f"timm-{seed}-{num_classes}"
    model = tiny_timm("test_resnet", num_classes=num_classes, seed=seed)
    timm.models.save_for_hf(model, folder, safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    return upload_folder(hub, repo_id, folder, revision)


def recorded_base(mask_repo: str) -> dict[str, object]:
    """The ``base_model`` record of the adapter pushed to ``mask_repo``."""
    path = HfApi().hf_hub_download(mask_repo, ARTIFACT_CONFIG_NAME)
    return json.loads(Path(path).read_text())["base_model"]


def downloaded(hub: LocalHub, repo_id: str) -> set[str]:
    """Names of the files of ``repo_id`` requested since the request log was cleared.

    (LFS files are then served from the fake CDN after a redirect from ``/resolve/``.)
    """
    prefix = f"/{repo_id}/resolve/"
    return {path.rsplit("/", 1)[-1] for _, path in hub.requests if path.startswith(prefix)}


def assert_untouched(
    model: nn.Module, state: dict[str, Tensor], flags: list[bool], types: list[type]
) -> None:
    """``model`` has exactly the given state, requires_grad flags and module types."""
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [type(m) for m in model.modules()] == types
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())


def snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], list[type]]:
    """What :func:`assert_untouched` compares against."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [p.requires_grad for p in model.parameters()], [type(m) for m in model.modules()]


# ---------------------------------------------------------------------------- transformers
@pytest.mark.filterwarnings("ignore:no image processor")
def test_transformers_base_by_id_is_created_from_the_hub(hub: LocalHub, tmp_path: Path) -> None:
    base_repo = hub.new_repo_id("tiny-vit")
    mask_repo = hub.new_repo_id("tiny-vit-mask")
    commit = push_transformers_base(hub, base_repo, tmp_path, seed=0)
    x = torch.randn(*VIT_INPUT)

    base = load_base_model(base_repo)
    assert type(base).__name__ == "ViTForImageClassification"
    model = train_briefly(get_piggyback_model(base, PiggybackConfig(num_labels=NUM_LABELS)), x)
    expected = outputs(model, x)
    model.push_to_hub(mask_repo, token=hub.token)
    record = recorded_base(mask_repo)
    assert record["name_or_path"] == base_repo and record["library"] == "transformers"
    assert record["revision"] == commit  # the commit it was created from, not just "main"
    assert record["weights"] == "pretrained"

    # A fresh cache: the base and the adapter both come from the server again.
    hub.clear_requests()
    reloaded = PiggybackModel.from_pretrained(base_repo, mask_repo, cache_dir=tmp_path / "fresh")
    assert {"config.json", "model.safetensors"} <= downloaded(hub, base_repo)
    assert (tmp_path / "fresh").is_dir()
    assert reloaded.family == "transformers" and reloaded.active_adapter == "default"
    assert torch.equal(outputs(reloaded, x), expected)


@pytest.mark.filterwarnings("ignore:no image processor")
def test_transformers_base_revision_is_recorded_used_and_checked(
    hub: LocalHub, tmp_path: Path
) -> None:
    base_repo = hub.new_repo_id("tiny-vit")
    push_transformers_base(hub, base_repo, tmp_path, seed=0)
    v2 = push_transformers_base(hub, base_repo, tmp_path, seed=1, revision="v2")
    x = torch.randn(*VIT_INPUT)

    # (1) created by name at a branch: the exact commit is recorded.
    mask_a = hub.new_repo_id("mask-a")
    base = load_base_model(base_repo, revision="v2")
    model = train_briefly(get_piggyback_model(base, PiggybackConfig(num_labels=NUM_LABELS)), x)
    expected = outputs(model, x)
    model.push_to_hub(mask_a, token=hub.token)
    assert recorded_base(mask_a)["revision"] == v2
    assert torch.equal(outputs(PiggybackModel.from_pretrained(base_repo, mask_a), x), expected)
    same = PiggybackModel.from_pretrained(base_repo, mask_a, base_revision="v2")
    assert torch.equal(outputs(same, x), expected)

    with pytest.raises(BaseModelMismatchError) as err:
        PiggybackModel.from_pretrained(base_repo, mask_a, base_revision="main")
    assert base_repo in str(err.value) and f"revision {v2}" in str(err.value)
    assert "verify_base=False" in str(err.value)

    # (2) created by the user with transformers, revision given in the config: recorded as is.
    from transformers import AutoModelForImageClassification

    mask_b = hub.new_repo_id("mask-b")
    base = AutoModelForImageClassification.from_pretrained(base_repo, revision="v2")
    config = PiggybackConfig(num_labels=NUM_LABELS, base_model_revision="v2")
    model = train_briefly(get_piggyback_model(base, config), x)
    expected = outputs(model, x)
    model.push_to_hub(mask_b, token=hub.token)
    assert recorded_base(mask_b)["revision"] == "v2"
    assert recorded_base(mask_b)["weights"] == "pretrained"  # v2's files in the cache match
    assert torch.equal(outputs(PiggybackModel.from_pretrained(base_repo, mask_b), x), expected)
    with pytest.raises(BaseModelMismatchError, match=rf"{base_repo} at revision v2"):
        PiggybackModel.from_pretrained(base_repo, mask_b, base_revision="main")

    # The expert opt-out loads onto the other base anyway.
    other = PiggybackModel.from_pretrained(
        base_repo, mask_b, base_revision="main", verify_base=False
    )
    assert other.active_adapter == "default"
    assert not torch.equal(outputs(other, x), expected)


# ---------------------------------------------------------------------------- timm
def test_timm_hf_hub_base_is_created_from_the_hub(hub: LocalHub, tmp_path: Path) -> None:
    base_repo = hub.new_repo_id("tiny-resnet")
    mask_repo = hub.new_repo_id("tiny-resnet-mask")
    push_timm_base(hub, base_repo, tmp_path, seed=0)
    x = torch.randn(*RESNET_INPUT)

    hub.clear_requests()
    base = timm.create_model(f"hf-hub:{base_repo}", pretrained=True).eval()  # as users do
    # timm downloads through huggingface_hub, so it honours the patched endpoint.
    assert {"config.json", "model.safetensors"} <= downloaded(hub, base_repo)
    reference = tiny_timm("test_resnet", seed=0).state_dict()
    assert all(torch.equal(base.state_dict()[k], v) for k, v in reference.items())

    model = train_briefly(get_piggyback_model(base, PiggybackConfig(num_labels=NUM_LABELS)), x)
    expected = outputs(model, x)
    model.push_to_hub(mask_repo, token=hub.token)
    record = recorded_base(mask_repo)
    assert record["name_or_path"] == f"hf-hub:{base_repo}" and record["library"] == "timm"
    # Created by timm, not pb-adapters: shown to be the checkpoint's by its files in the cache.
    assert record["weights"] == "pretrained"

    reloaded = PiggybackModel.from_pretrained(f"hf-hub:{base_repo}", mask_repo)
    assert reloaded.family == "timm"
    assert torch.equal(outputs(reloaded, x), expected)


def test_timm_base_revision_is_used_and_checked(hub: LocalHub, tmp_path: Path) -> None:
    base_repo = hub.new_repo_id("tiny-resnet")
    push_timm_base(hub, base_repo, tmp_path, seed=0)
    push_timm_base(hub, base_repo, tmp_path, seed=1, revision="v2")
    x = torch.randn(*RESNET_INPUT)
    name = f"hf-hub:{base_repo}"

    # timm names a revision inside the id ("hf-hub:id@v2"); the adapter records id and revision.
    mask_a = hub.new_repo_id("mask-a")
    base = load_base_model(name, revision="v2")
    assert base.pretrained_cfg["hf_hub_id"] == f"{base_repo}@v2"
    model = train_briefly(get_piggyback_model(base, PiggybackConfig(num_labels=NUM_LABELS)), x)
    expected = outputs(model, x)
    model.push_to_hub(mask_a, token=hub.token)
    assert (
        recorded_base(mask_a)["name_or_path"] == name and recorded_base(mask_a)["revision"] == "v2"
    )
    for kwargs in ({"model": f"{name}@v2"}, {"model": name, "base_revision": "v2"}):
        reloaded = PiggybackModel.from_pretrained(model_id=mask_a, **kwargs)
        assert torch.equal(outputs(reloaded, x), expected)
    with pytest.raises(BaseModelMismatchError, match=rf"made for {name} at revision v2"):
        PiggybackModel.from_pretrained(name, mask_a, base_revision="main")
    with pytest.raises(PbAdaptersError, match="give the revision once"):
        PiggybackModel.from_pretrained(f"{name}@v2", mask_a, base_revision="main")

    # Name and revision given separately in the config: the bare name finds the revision.
    mask_b = hub.new_repo_id("mask-b")
    config = PiggybackConfig(
        num_labels=NUM_LABELS, base_model_name_or_path=name, base_model_revision="v2"
    )
    model = train_briefly(get_piggyback_model(load_base_model(f"{name}@v2"), config), x)
    expected = outputs(model, x)
    model.push_to_hub(mask_b, token=hub.token)
    record = recorded_base(mask_b)
    assert record["name_or_path"] == name and record["revision"] == "v2"
    assert torch.equal(outputs(PiggybackModel.from_pretrained(name, mask_b), x), expected)
    with pytest.raises(BaseModelMismatchError, match=rf"made for {name} at revision v2"):
        PiggybackModel.from_pretrained(name, mask_b, base_revision="main")


def test_timm_revision_inside_the_recorded_name_is_used_for_the_bare_id(
    hub: LocalHub, tmp_path: Path
) -> None:
    base_repo = hub.new_repo_id("tiny-resnet")
    push_timm_base(hub, base_repo, tmp_path, seed=0)
    push_timm_base(hub, base_repo, tmp_path, seed=1, revision="v2")
    mask_repo = hub.new_repo_id("mask")
    base = timm.create_model(f"hf-hub:{base_repo}@v2", pretrained=True)
    get_piggyback_model(base, PiggybackConfig(num_labels=NUM_LABELS)).push_to_hub(
        mask_repo, token=hub.token
    )
    PiggybackModel.from_pretrained(f"hf-hub:{base_repo}", mask_repo)


def test_timm_registry_name_is_created_from_its_hub_repo(hub: LocalHub, tmp_path: Path) -> None:
    # The registry's test_resnet takes its weights from timm/test_resnet.r160_in1k.
    hub.add_user("timm")
    repo_id = "timm/test_resnet.r160_in1k"
    if ("model", repo_id) not in hub.repos:
        token = hub.make_token("timm")
        for seed, revision in ((0, None), (1, "v2")):
            folder = tmp_path / f"registry-{seed}"
            model = tiny_timm("test_resnet", num_classes=1000, seed=seed)
            timm.models.save_for_hf(model, folder, safe_serialization=True)
            api = HfApi(token=token)
            api.create_repo(repo_id, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision)
    x = torch.randn(*RESNET_INPUT)
    for seed, revision in ((0, None), (1, "v2")):
        hub.clear_requests()
        base = load_base_model("test_resnet", revision=revision)
        assert "model.safetensors" in downloaded(hub, repo_id)
        reference = tiny_timm("test_resnet", num_classes=1000, seed=seed)
        assert torch.equal(outputs(base, x), outputs(reference, x))
    # The registry's own architecture/config is kept; only the weights' revision changed.
    assert base.pretrained_cfg["hf_hub_id"] == f"{repo_id}@v2"
    assert base.pretrained_cfg["architecture"] == "test_resnet"


# ---------------------------------------------------------------------------- unknown names
@pytest.mark.parametrize(
    ("make_name", "error", "pattern"),
    [
        (lambda hub: hub.new_repo_id("absent"), HubError, r"not found on http://127\.0\.0\.1"),
        (lambda hub: f"hf-hub:{hub.new_repo_id('absent')}", HubError, r"with timm|not found"),
        (
            lambda hub: "resnet5O",
            PbAdaptersError,
            r"not in timm's registry \(did you mean resnet50",
        ),
    ],
)
def test_unknown_base_names_give_clear_errors(
    hub: LocalHub,
    tmp_path: Path,
    make_name: Callable[[LocalHub], str],
    error: type[Exception],
    pattern: str,
) -> None:
    artifact = tmp_path / "artifact"
    get_piggyback_model(tiny_timm(), PiggybackConfig(num_labels=NUM_LABELS)).save_pretrained(
        artifact, write_card=False
    )
    name = make_name(hub)
    with pytest.raises(error, match=pattern) as err:
        PiggybackModel.from_pretrained(name, artifact)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_a_repo_that_is_not_a_model_gives_a_clear_error(hub: LocalHub, tmp_path: Path) -> None:
    mask_repo = hub.new_repo_id("mask")
    get_piggyback_model(tiny_timm(), PiggybackConfig(num_labels=NUM_LABELS)).push_to_hub(
        mask_repo, token=hub.token
    )
    with pytest.raises(PbAdaptersError, match="transformers could not load it"):
        load_base_model(mask_repo)  # an adapter repo: its config.json is no model config
    with pytest.raises(PbAdaptersError, match="timm could not create it"):
        load_base_model(f"hf-hub:{mask_repo}")
    base_repo = hub.new_repo_id("tiny-resnet")
    push_timm_base(hub, base_repo, tmp_path, seed=0)
    with pytest.raises(HubError, match=r"revision 'nope' not found"):
        load_base_model(f"hf-hub:{base_repo}", revision="nope")
    with pytest.raises(HubError, match=r"revision 'nope' not found"):
        load_base_model(base_repo, revision="nope", library="transformers")


# ---------------------------------------------------------------------------- wrong bases
def test_load_adapter_onto_a_wrong_base_is_refused_and_changes_nothing(
    hub: LocalHub, tmp_path: Path
) -> None:
    base_repo = hub.new_repo_id("tiny-resnet")
    push_timm_base(hub, base_repo, tmp_path, seed=0)
    x = torch.randn(*RESNET_INPUT)
    mask_repo = hub.new_repo_id("mask")
    base = load_base_model(f"hf-hub:{base_repo}")
    trained = train_briefly(get_piggyback_model(base, PiggybackConfig(num_labels=NUM_LABELS)), x)
    trained.push_to_hub(mask_repo, token=hub.token)

    # An existing wrapper around other weights (same architecture), with an adapter of its own.
    other = get_piggyback_model(tiny_timm("test_resnet", seed=5), PiggybackConfig(num_labels=2))
    state = {k: v.clone() for k, v in other.state_dict().items()}
    before = outputs(other, x)
    with pytest.raises(BaseModelMismatchError, match=rf"made for hf-hub:{base_repo}"):
        other.load_adapter(mask_repo, adapter_name="task")
    assert list(other.peft_config) == ["default"] and other.active_adapter == "default"
    assert other.state_dict().keys() == state.keys()
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(outputs(other, x), before)

    other.load_adapter(mask_repo, adapter_name="task", verify_base=False)
    assert set(other.peft_config) == {"default", "task"}


def test_from_pretrained_onto_a_wrong_base_object_leaves_it_unchanged(
    hub: LocalHub, tmp_path: Path
) -> None:
    base_repo = hub.new_repo_id("tiny-vit")
    push_transformers_base(hub, base_repo, tmp_path, seed=0)
    mask_repo = hub.new_repo_id("mask")
    x = torch.randn(*VIT_INPUT)
    base = load_base_model(base_repo)
    get_piggyback_model(base, PiggybackConfig(num_labels=NUM_LABELS)).push_to_hub(
        mask_repo, token=hub.token
    )

    plain = tiny_transformers("vit", seed=3)
    labels = dict(plain.config.id2label)
    saved = snapshot(plain)
    with pytest.raises(BaseModelMismatchError, match=rf"made for {base_repo} at revision"):
        PiggybackModel.from_pretrained(plain, mask_repo)
    assert_untouched(plain, *saved)
    assert plain.config.id2label == labels and plain.config.num_labels == len(labels)

    loaded = PiggybackModel.from_pretrained(plain, mask_repo, verify_base=False)
    assert loaded.base_model is plain and loaded.active_adapter == "default"
    assert outputs(loaded, x).shape == (x.shape[0], NUM_LABELS)
