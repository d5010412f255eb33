"""The wrapper: exactness at init, freezing, heads, save/load round trips and refused loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pb_adapters import (
    AdapterNotFoundError,
    ArtifactError,
    BaseModelMismatchError,
    ConfigError,
    FormatVersionError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.methods.base import AdapterLayer
from pb_adapters.serialization import (
    ARTIFACT_CONFIG_NAME,
    ARTIFACT_WEIGHTS_NAME,
    read_adapter_config,
)
from tests.factories import (
    TIMM_MODELS,
    TRANSFORMERS_MODELS,
    tiny_timm,
    tiny_transformers,
    train_steps,
)


def _images(size: int = 32, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _state_copy(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- exactness at init
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_outputs_equal_base_at_init(name):
    model = tiny_timm(name)
    x = _images(64 if "efficientnet" in name else 32, n=2)
    reference = model(x)
    wrapped = get_piggyback_model(model, PiggybackConfig()).eval()
    assert torch.equal(wrapped(x), reference)
    wrapped.train()  # frozen norms stay in eval mode, so training mode gives the same outputs
    with torch.no_grad():
        assert torch.equal(wrapped(x), reference)


@pytest.mark.parametrize("kind", TRANSFORMERS_MODELS)
def test_transformers_outputs_equal_base_at_init(kind):
    model = tiny_transformers(kind)
    x = _images()
    reference = model(pixel_values=x).logits
    wrapped = get_piggyback_model(model, PiggybackConfig()).eval()
    out = wrapped(pixel_values=x)
    assert type(out).__name__.startswith("ImageClassifierOutput")
    assert torch.equal(out.logits, reference)


def test_default_targets_cover_stem_downsample_and_hidden_linear_not_head():
    model = tiny_timm("test_resnet")
    wrapped = get_piggyback_model(model, PiggybackConfig())
    masked = set(wrapped.mask_stats().per_layer)
    assert "conv1" in masked or "conv1.0" in masked  # the stem
    assert any("downsample" in name for name in masked)
    assert "fc" not in masked
    vit = get_piggyback_model(tiny_timm("test_vit"), PiggybackConfig())
    masked = set(vit.mask_stats().per_layer)
    assert (
        "patch_embed.proj" in masked
        and "blocks.0.attn.qkv" in masked
        and "blocks.0.mlp.fc1" in masked
    )
    assert "head" not in masked


def test_wrapped_layers_expose_weight_and_bias():
    model = tiny_transformers("vit")
    projection = model.vit.embeddings.patch_embeddings.projection
    wrapped = get_piggyback_model(model, PiggybackConfig())
    layer = wrapped.base_model.vit.embeddings.patch_embeddings.projection
    assert isinstance(layer, AdapterLayer)
    assert layer.weight is projection.weight and layer.bias is projection.bias
    assert layer.weight.dtype == torch.float32 and layer.out_channels == projection.out_channels


def test_grouped_and_depthwise_convs_are_masked_and_exact():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1, groups=2),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 3),
    ).eval()
    x = torch.randn(2, 4, 6, 6)
    reference = model(x)
    wrapped = get_piggyback_model(model, PiggybackConfig(target_modules=["0", "1"])).eval()
    assert torch.equal(wrapped(x), reference)
    stats = wrapped.mask_stats()
    assert stats.num_masked == 8 * 2 * 9 + 8 * 1 * 9


# ---------------------------------------------------------------------------- training semantics
def test_straight_through_gradient_reaches_scores():
    wrapped = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=3)).train()
    layer = next(m for _, m in wrapped.adapter_layers())
    x = torch.randn(2, layer.in_channels, 8, 8)
    layer(x).square().sum().backward()
    score_grad = layer.mask_scores["default"].grad
    assert score_grad is not None and score_grad.abs().sum() > 0
    # Straight-through: dL/dscore = dL/dmask = dL/dW_eff * W (the binarizer passes it unchanged).
    effective = layer.weight.detach().clone().requires_grad_(True)
    layer._forward_with(layer.base_layer, x, effective).square().sum().backward()
    torch.testing.assert_close(score_grad, effective.grad * layer.weight, rtol=0, atol=0)


def test_base_weights_bit_identical_after_training_and_only_masks_head_train():
    model = tiny_timm("test_efficientnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = get_piggyback_model(model, PiggybackConfig(num_labels=3))
    groups = wrapped.parameter_groups()
    assert set(groups) == {"masks", "head"}
    x, y = _images(64), torch.tensor([0, 1, 2, 0])
    train_steps(wrapped, x, y, steps=5, lr=1e-2)
    assert wrapped.mask_stats().zeros > 0  # masks really moved
    with wrapped.disable_adapter():
        after = {}
        for name, tensor in wrapped.base_model.state_dict().items():
            if "mask_scores" in name or "packed_" in name:
                continue
            after[name.replace(".base_layer", "")] = tensor
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name  # BN running stats included


def test_train_norms_trains_a_per_task_copy_and_leaves_the_base_alone():
    model = tiny_timm("test_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items() if "bn" in k}
    wrapped = get_piggyback_model(model, PiggybackConfig(num_labels=3, train_norms=True))
    assert "norms" in wrapped.parameter_groups()
    train_steps(wrapped, _images(), torch.tensor([0, 1, 2, 0]), steps=2)
    with wrapped.disable_adapter():
        base_state = wrapped.base_model.state_dict()
        for name, tensor in before.items():
            assert torch.equal(base_state[name], tensor)
    task_bn = wrapped.base_model.bn1
    assert not torch.equal(task_bn.running_mean, before["bn1.running_mean"])


def test_ternary_masks_start_at_base_and_round_trip(tmp_path):
    model = tiny_timm("test_resnet")
    x = _images()
    reference = model(x)
    wrapped = get_piggyback_model(model, PiggybackConfig(mask_type="ternary", num_labels=3))
    with torch.no_grad():
        layer = next(m for _, m in wrapped.adapter_layers())
        layer.mask_scores["default"][0].fill_(-1.0)  # some -1 entries
        layer.mask_scores["default"][1].fill_(1e-3)  # some 0 entries
    wrapped.eval()
    out = wrapped(x)
    wrapped.save_pretrained(tmp_path)
    reloaded = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path).eval()
    assert torch.equal(reloaded(x), out)
    assert not torch.equal(out, reference[:, :3])
    assert read_adapter_config(tmp_path)["modules"][0]["encoding"] == "bitpack+sign"


# ---------------------------------------------------------------------------- heads and labels
def test_fresh_head_with_labels_and_base_head_restored_when_disabled():
    model = tiny_transformers("vit", num_labels=5)
    x = _images()
    reference = model(pixel_values=x).logits
    id2label = {0: "cat", 1: "dog", 2: "bird"}
    wrapped = get_piggyback_model(model, PiggybackConfig(id2label=id2label))
    assert wrapped(pixel_values=x).logits.shape == (4, 3)
    assert wrapped.base_model.config.id2label == id2label and wrapped.base_model.num_labels == 3
    with wrapped.disable_adapter():
        assert torch.equal(wrapped(pixel_values=x).logits, reference)
        assert wrapped.base_model.config.num_labels == 5
    assert wrapped.base_model.config.num_labels == 3


def test_print_trainable_parameters_and_mask_stats(capsys):
    wrapped = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=3))
    wrapped.print_trainable_parameters()
    printed = capsys.readouterr().out
    assert "trainable params:" in printed and "masked layers:" in printed
    stats = wrapped.mask_stats()
    assert (
        stats.total == 0.0
        and stats.num_masked > 0
        and all(v == 0.0 for v in stats.per_layer.values())
    )
    assert "0.00% zeros" in str(stats)


# ---------------------------------------------------------------------------- artifacts
def _trained(name="test_resnet", num_labels=3, steps=3, seed=0):
    model = tiny_timm(name, seed=seed)
    wrapped = get_piggyback_model(model, PiggybackConfig(num_labels=num_labels))
    size = 64 if "efficientnet" in name else 32
    train_steps(wrapped, _images(size), torch.tensor([0, 1, 2, 0]) % num_labels, steps=steps)
    return wrapped


@pytest.mark.parametrize("name", ["test_resnet", "tf_efficientnet_lite0", "test_vit"])
def test_save_load_round_trip_is_bit_identical(tmp_path, name):
    wrapped = _trained(name)
    assert wrapped.mask_stats().zeros > 0
    x = _images(64 if "efficientnet" in name else 32)
    expected = wrapped(x)
    wrapped.save_pretrained(tmp_path)
    reloaded = PiggybackModel.from_pretrained(tiny_timm(name), tmp_path).eval()
    assert torch.equal(reloaded(x), expected)
    assert reloaded.mask_stats().per_layer == wrapped.mask_stats().per_layer


@pytest.mark.parametrize("kind", TRANSFORMERS_MODELS)
def test_transformers_round_trip(tmp_path, kind):
    model = tiny_transformers(kind)
    wrapped = get_piggyback_model(model, PiggybackConfig(id2label={0: "a", 1: "b"}))
    train_steps(wrapped, _images(), torch.tensor([0, 1, 1, 0]))
    x = _images()
    expected = wrapped(pixel_values=x).logits
    wrapped.save_pretrained(tmp_path)
    reloaded = PiggybackModel.from_pretrained(tiny_transformers(kind), tmp_path).eval()
    assert torch.equal(reloaded(pixel_values=x).logits, expected)
    assert reloaded.base_model.config.id2label == {0: "a", 1: "b"}


def test_bitpack_artifact_is_format_1_with_one_bit_per_weight(tmp_path):
    wrapped = _trained("tf_efficientnet_lite0")
    wrapped.save_pretrained(tmp_path, mask_encoding="bitpack")
    data = read_adapter_config(tmp_path)
    tensors = load_file(tmp_path / ARTIFACT_WEIGHTS_NAME)
    for record in data["modules"]:
        packed = tensors[f"layers.{record['name']}.mask"]
        assert packed.dtype == torch.uint8
        assert packed.numel() == math.ceil(record["numel"] / 8)
    mask_bytes = sum(t.numel() for k, t in tensors.items() if k.startswith("layers."))
    masked = sum(r["numel"] for r in data["modules"])
    assert mask_bytes == sum(math.ceil(r["numel"] / 8) for r in data["modules"])
    size = wrapped.adapter_size(mask_encoding="bitpack")
    assert (
        size["mask_bytes"] == size["packed_mask_bytes"] == mask_bytes
        and size["bits_per_masked_weight"] <= 8 * (masked + 7 * 49) / masked
    )
    assert data["format_version"] == 1 and "tensor_encodings" not in data
    assert data["method"] == "piggyback"
    assert data["base_model"]["architecture"] == "tf_efficientnet_lite0"
    reloaded = PiggybackModel.from_pretrained(tiny_timm("tf_efficientnet_lite0"), tmp_path)
    assert reloaded.mask_stats().per_layer == wrapped.mask_stats().per_layer


def test_entropy_coded_artifact_is_smaller_and_reloads_bit_exactly(tmp_path):
    wrapped = _trained("tf_efficientnet_lite0")
    wrapped.save_pretrained(tmp_path)
    data = read_adapter_config(tmp_path)
    tensors = load_file(tmp_path / ARTIFACT_WEIGHTS_NAME)
    coded = data["tensor_encodings"]
    assert data["format_version"] == 2 and coded
    assert set(coded.values()) == {"ans"} and all(k.endswith(".mask") for k in coded)
    mask_bytes = sum(t.numel() for k, t in tensors.items() if k.startswith("layers."))
    size = wrapped.adapter_size()
    stats = wrapped.mask_stats()
    assert size["mask_bytes"] == mask_bytes < size["packed_mask_bytes"]
    entropy = size["entropy_bits_per_masked_weight"]
    assert entropy == pytest.approx(stats.entropy_bits_per_entry)
    assert entropy <= size["bits_per_masked_weight"] < size["packed_bits_per_masked_weight"]
    reloaded = PiggybackModel.from_pretrained(tiny_timm("tf_efficientnet_lite0"), tmp_path)
    for (_, ours), (_, theirs) in zip(
        wrapped.adapter_layers(), reloaded.adapter_layers(), strict=True
    ):
        assert torch.equal(ours.export_adapter("default")["mask"], theirs.packed_masks["default"])
    x = _images(64)
    assert torch.equal(reloaded.eval()(x), wrapped.eval()(x))


def _assert_unchanged(model, snapshot):
    state = model.state_dict()
    assert set(state) == set(snapshot)
    for key, tensor in snapshot.items():
        assert torch.equal(state[key], tensor), key


def test_wrong_base_refused_by_fingerprint_and_model_untouched(tmp_path):
    _trained(seed=0).save_pretrained(tmp_path)
    other = tiny_timm("test_resnet", seed=1)  # same shapes, other weights
    snapshot = _state_copy(other)
    modules_before = [type(m) for m in other.modules()]
    with pytest.raises(BaseModelMismatchError, match="verify_base=False"):
        PiggybackModel.from_pretrained(other, tmp_path)
    _assert_unchanged(other, snapshot)
    assert [type(m) for m in other.modules()] == modules_before
    assert all(p.requires_grad for p in other.parameters())
    # The expert opt-out loads it anyway.
    PiggybackModel.from_pretrained(other, tmp_path, verify_base=False)


def test_wrong_shapes_refused_naming_the_module(tmp_path):
    _trained().save_pretrained(tmp_path)
    other = tiny_timm("test_efficientnet")
    snapshot = _state_copy(other)
    with pytest.raises(ArtifactError, match=r"no module|weight shape"):
        PiggybackModel.from_pretrained(other, tmp_path)
    _assert_unchanged(other, snapshot)


def test_refused_load_onto_a_wrapped_model_leaves_it_as_it_was(tmp_path):
    _trained().save_pretrained(tmp_path)
    data = json.loads((tmp_path / ARTIFACT_CONFIG_NAME).read_text())
    bad = dict(data)
    bad["modules"] = [dict(r) for r in data["modules"]]
    bad["modules"][-1]["shape"] = [1, 2, 3, 4]
    bad["modules"][-1]["numel"] = 24
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / ARTIFACT_CONFIG_NAME).write_text(json.dumps(bad))
    (bad_dir / ARTIFACT_WEIGHTS_NAME).write_bytes((tmp_path / ARTIFACT_WEIGHTS_NAME).read_bytes())
    wrapped = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=4), "other")
    snapshot = _state_copy(wrapped)
    x = _images()
    before = wrapped.eval()(x)
    with pytest.raises(ArtifactError, match=bad["modules"][-1]["name"]):
        wrapped.load_adapter(bad_dir, adapter_name="task")
    _assert_unchanged(wrapped, snapshot)
    assert list(wrapped.peft_config) == ["other"] and torch.equal(wrapped(x), before)


def test_corrupt_or_mismatched_weights_file_refused(tmp_path):
    _trained().save_pretrained(tmp_path)
    weights = tmp_path / ARTIFACT_WEIGHTS_NAME
    tensors = load_file(weights)
    tensors["layers.extra.mask"] = torch.zeros(3, dtype=torch.uint8)
    save_file(tensors, weights)
    with pytest.raises(ArtifactError, match="hash"):
        PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)
    (tmp_path / ARTIFACT_WEIGHTS_NAME).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)
    with pytest.raises(ArtifactError, match="is not a folder"):
        PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path / "missing")


def test_future_format_version_refused(tmp_path):
    _trained().save_pretrained(tmp_path)
    path = tmp_path / ARTIFACT_CONFIG_NAME
    data = json.loads(path.read_text())
    data["format_version"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(FormatVersionError, match="upgrade pb-adapters"):
        PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)


def test_loaded_adapter_is_frozen_unless_trainable(tmp_path):
    wrapped = _trained()
    wrapped.save_pretrained(tmp_path)
    frozen = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)
    assert frozen.parameter_groups() == {}
    trainable = PiggybackModel.from_pretrained(
        tiny_timm("test_resnet"), tmp_path, is_trainable=True
    )
    assert set(trainable.parameter_groups()) == {"masks", "head"}
    x = _images()
    assert torch.equal(trainable.eval()(x), wrapped.eval()(x))  # scores reproduce the mask exactly


def test_adapter_names_and_errors():
    wrapped = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig())
    for bad in ["../x", "", "a/b", "x" * 65, ".hidden"]:
        with pytest.raises(ConfigError):
            wrapped.add_adapter(bad, PiggybackConfig())
    with pytest.raises(ConfigError, match="already loaded"):
        wrapped.add_adapter("default", PiggybackConfig())
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'nope'"):
        wrapped.set_adapter("nope")


def test_delete_adapter_restores_base(tmp_path):
    model = tiny_timm("test_resnet")
    x = _images()
    reference = model(x)
    wrapped = get_piggyback_model(model, PiggybackConfig(num_labels=3)).eval()
    wrapped.delete_adapter("default")
    assert wrapped.active_adapter is None
    assert torch.equal(wrapped(x), reference)


def test_save_without_adapter_refused(tmp_path):
    from pb_adapters.model import PiggybackModel as Wrapper

    with pytest.raises(AdapterNotFoundError):
        Wrapper(tiny_timm("test_resnet")).save_pretrained(tmp_path)
    assert not Path(tmp_path, ARTIFACT_CONFIG_NAME).exists()


def test_layers_with_their_own_forward_keep_it():
    from timm.layers import Conv2dSame, StdConv2d

    model = torch.nn.Sequential(StdConv2d(3, 4, 3), Conv2dSame(4, 4, 3, stride=2)).eval()
    x = _images(9, n=2)
    reference = model(x)
    wrapped = get_piggyback_model(model, PiggybackConfig(target_modules=["0", "1"])).eval()
    assert torch.equal(wrapped(x), reference)  # StdConv2d standardises, Conv2dSame pads like TF
    with torch.no_grad():
        layer = wrapped.base_model[0]
        layer.mask_scores["default"][0].zero_()
    assert not torch.equal(wrapped(x), reference)


def test_per_task_norms_and_saved_modules_round_trip(tmp_path):
    model = tiny_timm("test_resnet")
    config = PiggybackConfig(num_labels=3, train_norms=True, modules_to_save=["layer1.0.conv1"])
    wrapped = get_piggyback_model(model, config)
    assert {"masks", "head", "norms", "modules"} <= set(wrapped.parameter_groups())
    train_steps(wrapped, _images(), torch.tensor([0, 1, 2, 0]), steps=3)
    x = _images()
    expected = wrapped(x)
    wrapped.save_pretrained(tmp_path, write_card=False)
    kinds = {r["kind"] for r in read_adapter_config(tmp_path)["saved_modules"]}
    assert kinds == {"head", "norm", "module"}
    reloaded = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path).eval()
    assert torch.equal(reloaded(x), expected)
    with reloaded.disable_adapter():
        assert torch.equal(reloaded(x), tiny_timm("test_resnet")(x))


# ---------------------------------------------------------------------------- public surface
def test_api_page_lists_every_public_member():
    # The class is composed of mixins, so the API page lists its members by hand (in reading
    # order); a public method added to any part of the class must be added there too.
    page = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text().splitlines()
    start = page.index("::: pb_adapters.PiggybackModel")
    listed = []
    for line in page[start + 1 :]:
        if line and not line.startswith(" "):
            break
        if line.strip().startswith("- "):
            listed.append(line.strip()[2:])
    public = {
        name
        for cls in PiggybackModel.__mro__
        if cls not in (torch.nn.Module, object)
        for name in vars(cls)
        if not name.startswith("_")
    }
    assert len(listed) == len(set(listed))
    assert set(listed) == public
