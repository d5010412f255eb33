"""One contract, every registered method: the conformance matrix of the adapter methods.

Every test runs over ``available_methods()`` (the built-in methods and the toy method of
``tests/methods/toy``, registered by importing it), on tiny timm and transformers models and
32 px images, as PEFT's ``test_custom_models`` and timm's ``test_models`` run over their
registries. Where methods differ, the test reads it from the method's registry entry
(``MethodSpec``) or its layer class, never from the method's name. Outputs are compared in eval
mode, where every layer computes with its ``inference_weight`` (KSM's hardened mask, not the
relaxed one it trains with), and on one device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import tests.methods.toy  # noqa: F401  (registers the toy method: one folder, one registry call)
from pb_adapters import (
    ArtifactError,
    BaseModelMismatchError,
    PbAdaptersError,
    PiggybackModel,
    available_methods,
    get_method,
    get_piggyback_model,
)
from pb_adapters.methods.base import AdapterLayer
from pb_adapters.model import BASE_ADAPTER_NAME
from pb_adapters.training import PiggybackTrainer, TrainingArguments
from tests.factories import call, tiny_timm, tiny_transformers, train_steps
from tests.hub_server import LocalHub

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
METHODS = available_methods()
BASES: dict[str, Callable[[], nn.Module]] = {
    "timm-resnet": lambda: tiny_timm("test_resnet"),
    "hf-vit": lambda: tiny_transformers("vit"),
}
# A model no artifact of the matrix was made for.
OTHER_ARCHITECTURE = "test_efficientnet"


def _base(kind: str = "timm-resnet") -> nn.Module:
    """A fresh copy of a tiny base (same weights every call), on the test device."""
    return BASES[kind]().to(DEVICE)


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def _labels(n: int, num_labels: int) -> torch.Tensor:
    return (torch.arange(n) % num_labels).to(DEVICE)


def _config(method: str, **fields: Any):
    return get_method(method).config_class(**fields)


def _trained(method: str, kind: str = "timm-resnet", num_labels: int = 3) -> PiggybackModel:
    """A wrapped base whose ``default`` adapter took a few steps (its state is not the start)."""
    model = get_piggyback_model(_base(kind), _config(method, num_labels=num_labels))
    train_steps(model, _images(8), _labels(8, num_labels), steps=2)
    return model.eval()


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a refused load must leave as it was, tensors by exact bytes."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    state: dict[str, Any] = {
        "tensors": {name: tensor.detach().clone() for name, tensor in tensors},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "modules": [(name, type(m), m.training) for name, m in model.named_modules()],
    }
    if isinstance(model, PiggybackModel):
        state["adapters"] = {n: c.to_dict() for n, c in model.peft_config.items()}
        state["active"] = model.active_adapter
    return state


def _assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert {k: v for k, v in after.items() if k != "tensors"} == {
        k: v for k, v in before.items() if k != "tensors"
    }
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, tensor in before["tensors"].items():
        assert torch.equal(after["tensors"][name], tensor), name


def _logits_of_task(model: PiggybackModel, name: str, x: torch.Tensor) -> torch.Tensor:
    if name == BASE_ADAPTER_NAME:
        with model.disable_adapter():
            return call(model, x)
    model.set_adapter(name)
    return call(model, x)


def _mixed_logits(model: PiggybackModel, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Logits of a mixed-task batch through the wrapper's ``adapter_names=``."""
    if model.family == "transformers":
        return model(pixel_values=x, adapter_names=names).logits
    return model(x, adapter_names=names)


# ---------------------------------------------------------------------------- the registry
def test_the_toy_method_is_registered_from_its_own_folder():
    spec = get_method("toy")
    assert "toy" in METHODS
    for cls in (spec.config_class, spec.layer_class):
        assert cls.__module__.startswith("tests.methods.toy.")


@pytest.mark.parametrize("method", METHODS)
def test_registry_entry_names_real_config_fields(method):
    spec = get_method(method)
    fields = {f.name: f for f in dataclasses.fields(spec.config_class)}
    assert issubclass(spec.layer_class, AdapterLayer)
    assert spec.config_class.method == method
    for name, help_text in spec.cli_options.items():
        assert name in fields, f"cli option {name!r} is not a field of {spec.config_class}"
        assert isinstance(help_text, str) and help_text
    assert spec.layer_group in spec.lr_fields
    for group, name in spec.lr_fields.items():
        assert name in fields, f"lr field {name!r} of group {group!r} is not a config field"
        assert isinstance(getattr(spec.config_class(), name), float)
    if spec.training_schedule is not None:
        module, _, function = spec.training_schedule.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
    assert all(option.startswith("--") for option in spec.schedule_options)


# ---------------------------------------------------------------------------- the model
@pytest.mark.parametrize("kind", BASES)
@pytest.mark.parametrize("method", METHODS)
def test_exact_at_init(method, kind):
    x = _images()
    reference = call(_base(kind), x)
    model = get_piggyback_model(_base(kind), _config(method)).eval()
    assert torch.equal(call(model, x), reference)
    with model.disable_adapter():
        assert torch.equal(call(model, x), reference)


@pytest.mark.parametrize("kind", BASES)
@pytest.mark.parametrize("method", METHODS)
def test_only_the_methods_parameters_train(method, kind):
    base = _base(kind)
    pristine = {id(t): (t, t.detach().clone()) for t in [*base.parameters(), *base.buffers()]}
    model = get_piggyback_model(base, _config(method, num_labels=3, train_norms=True))
    groups = model.parameter_groups()
    assert {get_method(method).layer_group, "head", "norms"} <= set(groups)
    in_groups = {id(p) for params in groups.values() for p in params}
    assert {id(p) for p in model.parameters() if p.requires_grad} == in_groups

    before = {id(p): p.detach().clone() for params in groups.values() for p in params}
    optimizer = torch.optim.Adam([p for params in groups.values() for p in params], lr=1e-2)
    model.train()
    loss = nn.functional.cross_entropy(call(model, _images()), _labels(4, 3))
    loss.backward()
    assert all(p.grad is None for p in model.parameters() if id(p) not in in_groups)
    optimizer.step()
    for group, params in groups.items():  # every group did train
        assert any(not torch.equal(p, before[id(p)]) for p in params), group
    for tensor, original in pristine.values():  # and nothing of the base moved
        assert torch.equal(tensor, original)


@pytest.mark.parametrize("kind", BASES)
@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_round_trip_is_exact(method, kind, tmp_path):
    model = _trained(method, kind)
    x = _images()
    expected = call(model, x)
    folder = model.save_pretrained(tmp_path / "task", write_card=False)
    reloaded = PiggybackModel.from_pretrained(_base(kind), folder).eval()
    assert torch.equal(call(reloaded, x), expected)
    assert reloaded.peft_config["default"].to_dict() == model.peft_config["default"].to_dict()
    assert reloaded.mask_stats().zeros == model.mask_stats().zeros


@pytest.mark.parametrize("method", METHODS)
def test_push_and_pull_round_trip_is_exact(method, hub: LocalHub):
    model = _trained(method)
    x = _images()
    expected = call(model, x)
    repo_id = hub.new_repo_id(f"conformance-{method}")
    model.push_to_hub(repo_id, token=hub.token)
    pulled = PiggybackModel.from_pretrained(_base(), repo_id, token=hub.token).eval()
    assert torch.equal(call(pulled, x), expected)


@pytest.mark.parametrize("kind", BASES)
@pytest.mark.parametrize("method", METHODS)
def test_mixed_task_batch_equals_per_task_forwards(method, kind, tmp_path):
    # The first task is loaded from its artifact and a second one trained on top: the path every
    # method supports, methods whose tasks share layer state (PackNet) included. Those restore
    # their tasks under the names the artifact records, so the loaded task is read back.
    folder = _trained(method, kind, num_labels=3).save_pretrained(tmp_path, write_card=False)
    model = PiggybackModel.from_pretrained(_base(kind), folder)
    (one,) = model.peft_config
    model.add_adapter("two", _config(method, num_labels=4))
    model.set_adapter("two")
    train_steps(model, _images(8), _labels(8, 4), steps=2)

    names = [one, "two", BASE_ADAPTER_NAME, "two", one, BASE_ADAPTER_NAME]
    x = _images(len(names), seed=2)
    mixed = _mixed_logits(model, x, names)
    for task in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == task]
        alone = _logits_of_task(model, task, x[rows])
        assert torch.equal(mixed[rows, : alone.shape[1]], alone), task
        assert torch.all(mixed[rows, alone.shape[1] :] == float("-inf")), task


@pytest.mark.parametrize("kind", BASES)
@pytest.mark.parametrize("method", METHODS)
def test_merge_and_unload_equals_the_adapter(method, kind):
    model = _trained(method, kind)
    x = _images()
    expected = call(model, x)
    merged = model.merge_and_unload().eval()
    assert type(merged) is type(model.base_model)
    assert not any(isinstance(m, AdapterLayer) for m in merged.modules())
    assert torch.equal(call(merged, x), expected)
    assert torch.equal(call(model, x), expected)  # the wrapper itself is untouched


# ---------------------------------------------------------------------------- refused loads
def _corrupt_bytes(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


def _shorten_a_layer_tensor(folder: Path) -> None:
    """One method tensor one entry short, in a file whose recorded hash still matches."""
    weights = folder / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    key = min(k for k in tensors if k.startswith("layers."))
    tensors[key] = tensors[key].reshape(-1)[:-1].clone()
    save_file(tensors, weights, metadata=metadata)
    _edit_config(
        folder,
        lambda data: data.update(weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest()),
    )


def _edit_config(folder: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _negative_layer_lr(data: dict[str, Any]) -> None:
    spec = get_method(data["method"])
    data["config"][spec.lr_fields[spec.layer_group]] = -1.0


REFUSALS: dict[str, tuple[Callable[[Path], Any], str, type[Exception]]] = {
    # case: (how the artifact is spoiled, the base it meets, the error a fresh base gets)
    "wrong-base-weights": (lambda folder: None, "other-weights", BaseModelMismatchError),
    "wrong-architecture": (lambda folder: None, "other-architecture", ArtifactError),
    "corrupted-bytes": (_corrupt_bytes, "same", ArtifactError),
    "short-layer-tensor": (_shorten_a_layer_tensor, "same", ArtifactError),
    "unknown-config-field": (
        lambda folder: _edit_config(folder, lambda d: d["config"].update(surprise=1)),
        "same",
        ArtifactError,
    ),
    "negative-learning-rate": (
        lambda folder: _edit_config(folder, _negative_layer_lr),
        "same",
        ArtifactError,
    ),
}


def _refusal_base(which: str) -> nn.Module:
    if which == "other-weights":
        return tiny_timm("test_resnet", seed=1).to(DEVICE)
    if which == "other-architecture":
        return tiny_timm(OTHER_ARCHITECTURE).to(DEVICE)
    return _base()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Callable[[str], Path]:
    """``saved(method)``: a pristine artifact of a trained timm adapter (one per method)."""
    folders: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in folders:
            folder = tmp_path_factory.mktemp(f"saved-{method}")
            # bit planes stored as they are, so a shortened tensor reaches the method's checks
            _trained(method).save_pretrained(folder, write_card=False, mask_encoding="bitpack")
            folders[method] = folder
        return folders[method]

    return get


def _spoiled(saved: Callable[[str], Path], method: str, case: str, tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((saved(method) / name).read_bytes())
    REFUSALS[case][0](folder)
    return folder


@pytest.mark.parametrize("case", REFUSALS)
@pytest.mark.parametrize("method", METHODS)
def test_refused_load_leaves_a_plain_base_unchanged(method, case, saved, tmp_path):
    folder = _spoiled(saved, method, case, tmp_path)
    _, which, error = REFUSALS[case]
    base = _refusal_base(which)
    before = _snapshot(base)
    with pytest.raises(error):
        PiggybackModel.from_pretrained(base, folder)
    _assert_unchanged(before, _snapshot(base))


@pytest.mark.parametrize("case", REFUSALS)
@pytest.mark.parametrize("method", METHODS)
def test_refused_load_leaves_a_wrapper_unchanged(method, case, saved, tmp_path):
    folder = _spoiled(saved, method, case, tmp_path)
    model = get_piggyback_model(_refusal_base(REFUSALS[case][1]), _config(method, num_labels=2))
    model.eval()
    x = _images()
    before, output = _snapshot(model), call(model, x)
    with pytest.raises(PbAdaptersError):
        model.load_adapter(folder, "other")
    _assert_unchanged(before, _snapshot(model))
    assert torch.equal(call(model, x), output)


# ---------------------------------------------------------------------------- the trainer
@pytest.mark.parametrize("source", ["config", "arguments"])
@pytest.mark.parametrize("method", METHODS)
def test_trainer_uses_the_configured_learning_rates(method, source, tmp_path):
    spec = get_method(method)
    # A distinct rate per field, so that a group reading the wrong field shows. A
    # TrainingArguments field of the same name as a config field overrides it.
    fields = sorted(set(spec.lr_fields.values()))
    rates = {name: 1e-3 * (i + 2) for i, name in enumerate(fields)}
    overrides = {}
    if source == "arguments":
        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        overrides = {name: 1e-2 * (i + 2) for i, name in enumerate(fields) if name in known}
        assert overrides
    config = _config(method, num_labels=3, train_norms=True, **rates)
    model = get_piggyback_model(_base(), config)
    expected = {
        group: (rates | overrides)[spec.lr_fields[group]] for group in model.parameter_groups()
    }
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_epochs=1,
        batch_size=4,
        num_workers=0,
        lr_scheduler="constant",
        save_artifact=False,
        save_epoch_checkpoints=False,
        disable_progress_bar=True,
        report_to="none",
        cpu=DEVICE.type == "cpu",
        **overrides,
    )
    x = _images(4).cpu()
    dataset = [(x[i], i % 3) for i in range(4)]
    result = PiggybackTrainer(model, args, train_dataset=dataset).train()
    assert result.history[0]["lr"] == expected


# ---------------------------------------------------------------------------- the card
@pytest.mark.parametrize("method", METHODS)
def test_card_shows_the_methods_description_and_citation(method, tmp_path):
    spec = get_method(method)
    folder = _trained(method).save_pretrained(tmp_path / "task")
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert spec.description in card
    if spec.citation is not None:
        assert spec.citation in card
