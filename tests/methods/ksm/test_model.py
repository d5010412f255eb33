"""KSM adapters in the wrapper: start state, round trips, many tasks, merging, the Hub, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pb_adapters import (
    ArtifactError,
    ConfigError,
    KSMConfig,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.methods.ksm import KSMLayer
from pb_adapters.model import BASE_ADAPTER_NAME
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME
from tests.factories import call, call_task, tiny_timm, tiny_transformers, train_steps
from tests.hub_server import LocalHub


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _trained(factory, num_labels: int = 3, seed: int = 0, **config) -> PiggybackModel:
    model = get_piggyback_model(factory(), KSMConfig(num_labels=num_labels, **config))
    x = _images(8, seed=seed)
    train_steps(model, x, torch.arange(8) % num_labels, steps=3, lr=1e-2)
    return model


FACTORIES = {
    "resnet": lambda: tiny_timm("test_resnet"),
    "tf_efficientnet_lite0": lambda: tiny_timm("tf_efficientnet_lite0"),  # Conv2dSame, depthwise
    "vit": lambda: tiny_timm("test_vit"),  # fused qkv Linear
    "hf_vit": lambda: tiny_transformers("vit"),
}


@pytest.mark.parametrize("name", ["resnet", "tf_efficientnet_lite0", "vit", "hf_vit"])
def test_start_state_equals_the_base_exactly(name):
    x = _images()
    reference = call(FACTORIES[name](), x)
    model = get_piggyback_model(FACTORIES[name](), KSMConfig()).eval()
    assert torch.equal(call(model, x), reference)
    layers = [layer for _, layer in model.adapter_layers()]
    assert all(isinstance(layer, KSMLayer) for layer in layers)
    if name == "tf_efficientnet_lite0":  # timm's Conv2dSame keeps its dynamic padding
        assert any(type(layer.base_layer).__name__ == "Conv2dSame" for layer in layers)


@pytest.mark.parametrize("name", ["resnet", "tf_efficientnet_lite0", "vit", "hf_vit"])
def test_save_and_reload_on_a_fresh_base_is_bit_identical(tmp_path, name):
    model = _trained(FACTORIES[name]).eval()
    x = _images()
    expected = call(model, x)
    assert model.mask_stats().zeros > 0  # training switched kernels off
    folder = model.save_pretrained(tmp_path / "task")
    reloaded = PiggybackModel.from_pretrained(FACTORIES[name](), folder).eval()
    assert torch.equal(call(reloaded, x), expected)
    assert reloaded.peft_config["default"] == model.peft_config["default"]
    # Continuing training from the artifact keeps every binary bit.
    resumed = PiggybackModel.from_pretrained(FACTORIES[name](), folder, is_trainable=True)
    assert resumed.mask_stats().zeros == model.mask_stats().zeros


def test_artifact_costs_about_one_bit_per_weight_and_records_entries(tmp_path):
    model = _trained(FACTORIES["tf_efficientnet_lite0"])
    size = model.adapter_size()
    assert 0.9 < size["bits_per_masked_weight"] < 1.1
    folder = model.save_pretrained(tmp_path / "task")
    data = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())
    assert data["method"] == "ksm"
    records = {r["name"]: r for r in data["modules"]}
    stem = records["conv_stem"]  # 3x3 kernels: 32 x 3 entries of 9 weights
    assert (stem["entries"], stem["numel"], stem["encoding"]) == (96, 864, "ksm-bitpack+u8")
    assert sum(r["zeros"] for r in records.values()) == model.mask_stats().zeros
    card = (folder / "README.md").read_text()
    assert "kernel-wise soft mask" in card and "yang2021ksm" in card
    sparsity = model.mask_stats().total
    assert f"{100 * sparsity:.2f}% of mask entries off" in card


def test_corrupt_artifact_refused_and_model_untouched(tmp_path):
    model = _trained(FACTORIES["resnet"])
    folder = model.save_pretrained(tmp_path / "task", write_card=False)
    data = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())
    data["config"]["block_size"] = 4  # changes every expected shape of Linear / 1x1 layers
    (folder / ARTIFACT_CONFIG_NAME).write_text(json.dumps(data))
    target = get_piggyback_model(tiny_timm("test_resnet"), KSMConfig(num_labels=3), "other")
    x = _images()
    before = call(target.eval(), x)
    with pytest.raises(ArtifactError):
        target.load_adapter(folder, "broken")
    assert list(target.peft_config) == ["other"] and torch.equal(call(target, x), before)


def test_one_method_per_model():
    model = get_piggyback_model(tiny_timm("test_resnet"), KSMConfig(num_labels=3))
    with pytest.raises(ConfigError, match="holds 'ksm' adapters"):
        model.add_adapter("pb", PiggybackConfig(num_labels=3))


def test_tasks_switch_mix_and_merge(tmp_path):
    model = get_piggyback_model(tiny_timm("test_resnet"), KSMConfig(num_labels=3), "cars")
    model.add_adapter("birds", KSMConfig(num_labels=2))
    for name, classes, seed in (("cars", 3, 0), ("birds", 2, 1)):
        model.set_adapter(name)
        train_steps(model, _images(8, seed=seed), torch.arange(8) % classes, steps=3, lr=1e-2)
    x = _images(6)
    expected = {}
    for name in ("cars", "birds"):
        model.set_adapter(name)
        expected[name] = call(model, x)
    with model.disable_adapter():
        expected[BASE_ADAPTER_NAME] = call(model, x)
    assert not torch.equal(expected["cars"][:, :2], expected["birds"])

    # Mixed batch: each sample gets exactly what its task gives (compared with the same
    # sub-batch run alone: convolution results may depend on the batch size in the last bit).
    names = ["cars", "birds", BASE_ADAPTER_NAME, "birds", "cars", BASE_ADAPTER_NAME]
    mixed = model(x, adapter_names=names)
    for name in ("cars", "birds", BASE_ADAPTER_NAME):
        rows = [i for i, n in enumerate(names) if n == name]
        torch.testing.assert_close(mixed[rows, : expected[name].shape[1]], expected[name][rows])
        alone = call_task(model, name, x[rows])
        assert torch.equal(mixed[rows, : alone.shape[1]], alone), name

    # Frozen reloads of both tasks onto one fresh base switch back and forth exactly.
    for name in ("cars", "birds"):
        model.save_pretrained(tmp_path / name, name, write_card=False)
    fresh = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path / "cars", "cars")
    fresh.load_adapter(tmp_path / "birds", "birds")
    fresh.eval()
    for name in ("birds", "cars", "birds"):
        fresh.set_adapter(name)
        assert torch.equal(call(fresh, x), expected[name])

    # merge_and_unload: a plain timm model equal to the task, in train mode too (hard mask).
    model.train()
    merged = model.merge_and_unload("birds")
    assert not any(isinstance(m, KSMLayer) for m in merged.modules())
    assert torch.equal(merged.eval()(x), expected["birds"])


def test_hub_round_trip(hub: LocalHub):
    model = _trained(FACTORIES["resnet"]).eval()
    repo_id = hub.new_repo_id("ksm")
    model.push_to_hub(repo_id, token=hub.token, subfolder="digits")
    reloaded = PiggybackModel.from_pretrained(
        tiny_timm("test_resnet"), repo_id, subfolder="digits", token=hub.token
    ).eval()
    x = _images()
    assert torch.equal(call(reloaded, x), call(model, x))
    assert reloaded.list_adapters()[0].method == "ksm"


def test_train_command_with_method_ksm(tmp_path: Path):
    from pb_adapters.training.cli_args import build_train_parser, run_training
    from tests.training.test_cli_args import QUICK

    ns = build_train_parser().parse_args(
        [*QUICK, "--method", "ksm", "--mask-lr", "0.001", "--output-dir", str(tmp_path / "run")]
    )
    summary = run_training(ns, print_fn=lambda *a: None)
    assert summary["method"] == "ksm" and summary["reload_matches"] is True
    assert summary["num_masked_weights"] > 3_000_000  # EfficientNet-Lite0 without its head
    assert summary["num_mask_entries"] < summary["num_masked_weights"] / 8  # per kernel / block
    assert summary["reloaded_test_accuracy"] == summary["test_accuracy"]
    # 8 bits of scale per mask entry (one per kernel or block of 9), plus the binary plane
    # entropy-coded (nearly all ones after a few steps, so close to nothing)
    scale_bits = 8 * summary["num_mask_entries"] / summary["num_masked_weights"]
    assert scale_bits < summary["mask_bits_per_masked_weight"] < 1.1
    assert 0.9 < summary["bits_per_masked_weight"] < 1.5  # the whole weights file
    config = json.loads((Path(summary["output_dir"]) / ARTIFACT_CONFIG_NAME).read_text())
    assert config["method"] == "ksm" and config["config"]["mask_lr"] == 1e-3
