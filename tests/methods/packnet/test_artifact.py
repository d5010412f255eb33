"""PackNet artifacts: the packed network stored once, round trips, growth, refusals, the Hub."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pb_adapters import ArtifactError, BaseModelMismatchError, PackNetConfig, PiggybackModel
from pb_adapters.serialization import (
    ARTIFACT_CONFIG_NAME,
    ARTIFACT_WEIGHTS_NAME,
)
from pb_adapters.utils.bits import (
    bits_for_values,
    pack_uints,
    packed_size,
    unpack_uints,
)
from tests.factories import assert_mixed_close, call, tiny_timm

from .conftest import add_task

TASKS = ["t1", "t2", "t3"]


def _outputs(model, x, names=TASKS):
    out = {}
    for name in names:
        model.set_adapter(name)
        with torch.no_grad():
            out[name] = call(model, x).clone()
    return out


def _save(model, folder):
    for index, name in enumerate(model.peft_config, start=1):
        model.record_metrics(name, {"test_accuracy": index / 10}, [f"data-{name}"])
    return model.save_pretrained(folder, TASKS[-1])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_artifact_layout_stores_the_network_once(packed, tmp_path):
    folder = _save(packed, tmp_path / "net")
    data = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())
    tensors = load_file(folder / ARTIFACT_WEIGHTS_NAME)
    assert data["method"] == "packnet" and data["task_name"] == "t3"
    assert [t["name"] for t in data["tasks"]] == ["t1", "t2"]
    assert [t["config"]["task_index"] for t in data["tasks"]] == [1, 2]
    assert data["config"]["task_index"] == 3
    assert set(data["config"]["pruned_fraction"]) == {r["name"] for r in data["modules"]}
    bits = bits_for_values(4)  # 3 tasks + "free": 2 bits per weight
    for path, layer in packed.adapter_layers():
        numel = layer.base_layer.weight.numel()
        assert tensors[f"layers.{path}.owner"].numel() == packed_size(numel * bits)
        assert torch.equal(tensors[f"layers.{path}.packed"], layer.packed)
    # one packed copy of each weight: no per-task copies of the layers
    assert sum(1 for k in tensors if k.endswith(".packed")) == len(data["modules"])
    heads = [k for k in tensors if k.startswith(("modules.", "tasks."))]
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in heads} >= {"tasks.t1", "tasks.t2"}
    card = (folder / "README.md").read_text()
    assert "## Tasks" in card
    for name, accuracy in (("t1", "0.1000"), ("t2", "0.2000"), ("t3", "0.3000")):
        assert f"| {name} |" in card and accuracy in card


def test_round_trip_is_bit_identical(packed, batch, tmp_path):
    x, _ = batch
    folder = _save(packed, tmp_path / "net")
    reloaded = PiggybackModel.from_pretrained(tiny_timm(), folder).eval()
    assert list(reloaded.peft_config) == TASKS
    assert reloaded.active_adapter == "t3"
    before, after = _outputs(packed, x), _outputs(reloaded, x)
    assert all(torch.equal(before[n], after[n]) for n in TASKS)
    for (_, a), (_, b) in zip(packed.adapter_layers(), reloaded.adapter_layers(), strict=True):
        assert torch.equal(a.packed, b.packed) and torch.equal(a.owner, b.owner)
    again = reloaded.save_pretrained(tmp_path / "again", "t3")
    assert (again / ARTIFACT_WEIGHTS_NAME).read_bytes() == (
        folder / ARTIFACT_WEIGHTS_NAME
    ).read_bytes()
    assert json.loads((again / ARTIFACT_CONFIG_NAME).read_text()) == json.loads(
        (folder / ARTIFACT_CONFIG_NAME).read_text()
    )


def test_mixed_batches_and_set_adapter_on_a_reloaded_network(packed, batch, tmp_path):
    x, _ = batch
    reloaded = PiggybackModel.from_pretrained(tiny_timm(), _save(packed, tmp_path / "n")).eval()
    names = ["t2", "t1", "t3", "t2"]
    with torch.no_grad():
        mixed = reloaded(x, adapter_names=names)
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            reloaded.set_adapter(name)
            assert_mixed_close(mixed[rows], call(reloaded, x[rows]))


def test_adding_a_task_to_a_reloaded_network(packed, batch, tmp_path):
    x, y = batch
    folder = _save(packed, tmp_path / "net")
    reloaded = PiggybackModel.from_pretrained(tiny_timm(), folder)
    before = _outputs(reloaded, x)
    add_task(reloaded, "t4", x, (y + 1) % 3, optimizer="adam")
    assert reloaded.peft_config["t4"].task_index == 4
    after = _outputs(reloaded, x, [*TASKS, "t4"])
    assert all(torch.equal(before[n], after[n]) for n in TASKS)
    grown = reloaded.save_pretrained(tmp_path / "grown", "t4")
    data = json.loads((grown / ARTIFACT_CONFIG_NAME).read_text())
    assert [t["name"] for t in data["tasks"]] == TASKS
    # the metrics recorded for the earlier tasks travel on with them
    assert [t["metrics"]["test_accuracy"] for t in data["tasks"]] == [0.1, 0.2, 0.3]
    path, layer = next(iter(reloaded.adapter_layers()))
    owner = load_file(grown / ARTIFACT_WEIGHTS_NAME)[f"layers.{path}.owner"]
    assert owner.numel() == packed_size(layer.base_layer.weight.numel() * 3)  # 5 values: 3 bits
    final = PiggybackModel.from_pretrained(tiny_timm(), grown)
    assert all(torch.equal(after[n], v) for n, v in _outputs(final, x, [*TASKS, "t4"]).items())


def _corrupt_owner(folder, path):
    tensors = load_file(folder / ARTIFACT_WEIGHTS_NAME)
    tensors[f"layers.{path}.owner"] = torch.full_like(tensors[f"layers.{path}.owner"], 0xFF)
    save_file(tensors, folder / ARTIFACT_WEIGHTS_NAME)
    data = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())
    import hashlib

    data["weights_sha256"] = hashlib.sha256(
        (folder / ARTIFACT_WEIGHTS_NAME).read_bytes()
    ).hexdigest()
    (folder / ARTIFACT_CONFIG_NAME).write_text(json.dumps(data))


def test_refused_loads_leave_the_model_unchanged(packed, batch, tmp_path):
    x, _ = batch
    folder = _save(packed, tmp_path / "net")
    path = next(iter(packed.adapter_layers()))[0]
    bad = _save(packed, tmp_path / "bad")
    _corrupt_owner(bad, path)  # owner 3 (= 0b11) on every weight of a 3-task network is fine...
    data = json.loads((bad / ARTIFACT_CONFIG_NAME).read_text())
    data["config"]["task_index"] = 2  # ...but not when the artifact claims only 2 tasks
    for task in data["tasks"]:
        task["config"]["task_index"] = min(task["config"]["task_index"], 2)
    (bad / ARTIFACT_CONFIG_NAME).write_text(json.dumps(data))

    model = PiggybackModel(tiny_timm())
    add_task(model, "other", x, torch.tensor([0, 1, 2, 0]))
    state, outputs = _state(model), _outputs(model, x, ["other"])
    with pytest.raises(ArtifactError, match="fresh base"):
        model.load_adapter(folder)  # a second packed network cannot share these layers
    fresh = PiggybackModel(tiny_timm())
    fresh_state = _state(fresh)
    with pytest.raises(ArtifactError):
        fresh.load_adapter(bad)
    with pytest.raises(BaseModelMismatchError):
        PiggybackModel(tiny_timm(seed=1)).load_adapter(folder)
    assert list(model.peft_config) == ["other"] and not fresh.peft_config
    assert _state(fresh).keys() == fresh_state.keys()
    assert all(torch.equal(v, fresh_state[k]) for k, v in _state(fresh).items())
    assert all(torch.equal(v, state[k]) for k, v in _state(model).items())
    assert torch.equal(_outputs(model, x, ["other"])["other"], outputs["other"])


def test_refused_task_records(packed, tmp_path):
    folder = _save(packed, tmp_path / "net")
    data = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())
    data["tasks"][1]["name"] = "t1"
    (folder / ARTIFACT_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="twice"):
        PiggybackModel.from_pretrained(tiny_timm(), folder)


def test_hub_round_trip(packed, batch, hub):
    x, _ = batch
    repo_id = hub.new_repo_id("packed")
    for index, name in enumerate(TASKS, start=1):
        packed.record_metrics(name, {"test_accuracy": index / 10})
    packed.push_to_hub(repo_id, "t3", token=hub.token)
    reloaded = PiggybackModel.from_pretrained(tiny_timm(), repo_id, token=hub.token)
    before, after = _outputs(packed, x), _outputs(reloaded, x)
    assert all(torch.equal(before[n], after[n]) for n in TASKS)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("numel", [0, 1, 7, 13, 64])
def test_owner_index_packing_round_trip(bits, numel):
    values = torch.randint(0, 1 << bits, (numel,), generator=torch.Generator().manual_seed(bits))
    packed_values = pack_uints(values, bits)
    assert packed_values.dtype == torch.uint8 and packed_values.numel() == packed_size(numel * bits)
    assert torch.equal(unpack_uints(packed_values, numel, bits), values)


def test_owner_bits_are_ceil_log2_of_tasks_plus_one():
    assert [bits_for_values(t + 1) for t in (1, 2, 3, 4, 7, 8, 255)] == [1, 2, 2, 3, 3, 4, 8]
    with pytest.raises(ValueError):
        pack_uints(torch.tensor([4]), 2)


def test_config_validation():
    from pb_adapters import ConfigError

    for bad in ({"prune_ratio": 1.5}, {"epochs": 0}, {"task_index": 0}, {"momentum": -1}):
        with pytest.raises(ConfigError):
            PackNetConfig(**bad)
    assert PackNetConfig.from_dict(PackNetConfig(prune_ratio=0.5).to_dict()).prune_ratio == 0.5
