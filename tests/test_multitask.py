"""Many tasks on one base: loading, switching, mixed batches, merging, no forgetting, compile."""

from __future__ import annotations

import math

import pytest
import torch

from pb_adapters import (
    AdapterNotFoundError,
    PbAdaptersError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.model import BASE_ADAPTER_NAME
from tests.factories import call, tiny_timm, tiny_transformers, train_steps

CLASS_COUNTS = {"cars": 3, "flowers": 5, "birds": 2}


def _images(n: int = 6, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _train(model, name: str, steps: int = 3, seed: int = 0) -> None:
    model.set_adapter(name)
    classes = model.list_adapters()[list(model.peft_config).index(name)].num_labels
    train_steps(model, _images(8, seed=seed), torch.arange(8) % classes, steps=steps)


def _three_tasks(factory, tmp_path):
    """Train three tasks of different class counts, save each; return expected outputs."""
    model = None
    for name, count in CLASS_COUNTS.items():
        config = PiggybackConfig(id2label={i: f"{name}-{i}" for i in range(count)})
        if model is None:
            model = get_piggyback_model(factory(), config, name)
        else:
            model.add_adapter(name, config)
        _train(model, name)
    x = _images()
    expected = {}
    for name in CLASS_COUNTS:
        model.set_adapter(name)
        expected[name] = call(model, x)
        model.save_pretrained(tmp_path / name, name)
    return model, x, expected


@pytest.mark.parametrize(
    "factory", [lambda: tiny_timm("test_resnet"), lambda: tiny_transformers("vit")]
)
def test_three_tasks_round_trip_onto_one_fresh_base(tmp_path, factory):
    _, x, expected = _three_tasks(factory, tmp_path)
    model = None
    for name in CLASS_COUNTS:
        if model is None:
            model = PiggybackModel.from_pretrained(factory(), tmp_path / name, adapter_name=name)
        else:
            model.load_adapter(tmp_path / name, adapter_name=name)
    model.eval()
    listed = {a.name: a for a in model.list_adapters()}
    assert {n: a.num_labels for n, a in listed.items()} == CLASS_COUNTS
    assert listed["cars"].id2label[0] == "cars-0" and listed["cars"].active
    for name in ["flowers", "cars", "birds", "flowers"]:
        model.set_adapter(name)
        assert torch.equal(call(model, x), expected[name]), name


def test_mixed_batch_equals_per_task_runs(tmp_path):
    model, x, _ = _three_tasks(lambda: tiny_timm("test_resnet"), tmp_path)
    names = ["cars", "flowers", "birds", "flowers", BASE_ADAPTER_NAME, "cars"]
    mixed = model(x, adapter_names=names)
    assert isinstance(mixed, torch.Tensor) and mixed.shape == (6, 7)  # base head has 7 classes
    for name in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == name]
        if name == BASE_ADAPTER_NAME:
            with model.disable_adapter():
                alone = model(x[rows])
        else:
            model.set_adapter(name)
            alone = model(x[rows])
        width = alone.shape[1]
        assert torch.equal(mixed[rows, :width], alone), name
        assert torch.all(mixed[rows, width:] == float("-inf"))


def test_mixed_batch_keeps_transformers_output_type(tmp_path):
    model, x, _ = _three_tasks(lambda: tiny_transformers("vit"), tmp_path)
    names = ["birds", "cars", "birds", "cars", "birds", "cars"]
    out = model(pixel_values=x, adapter_names=names)
    assert type(out).__name__ == "ImageClassifierOutput" and out.logits.shape == (6, 3)
    model.set_adapter("birds")
    assert torch.equal(out.logits[[0, 2, 4], :2], model(pixel_values=x[[0, 2, 4]]).logits)


def test_mixed_batch_errors(tmp_path):
    model, x, _ = _three_tasks(lambda: tiny_timm("test_resnet"), tmp_path)
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'cats'"):
        model(x, adapter_names=["cats"] * 6)
    with pytest.raises(PbAdaptersError, match="6"):
        model(x, adapter_names=["cars"] * 5)
    model.train()
    with pytest.raises(PbAdaptersError, match="eval"):
        model(x, adapter_names=["cars"] * 6)


def test_no_forgetting_training_and_loading_other_tasks(tmp_path):
    model, x, expected = _three_tasks(lambda: tiny_timm("test_resnet"), tmp_path)
    model.add_adapter("extra", PiggybackConfig(num_labels=4))
    model.set_adapter("extra")
    train_steps(model, x, torch.arange(6) % 4, lr=1e-1)
    assert model.mask_stats("extra").zeros > 0  # task B really trained
    model.load_adapter(tmp_path / "cars", adapter_name="cars-again")
    model.eval()
    for name in CLASS_COUNTS:
        model.set_adapter(name)
        assert torch.equal(model(x), expected[name]), name


def test_delete_and_disable(tmp_path):
    base = tiny_timm("test_resnet")
    x = _images()
    reference = base(x)
    model, _, expected = _three_tasks(lambda: tiny_timm("test_resnet"), tmp_path)
    with model.disable_adapter():
        assert torch.equal(model(x), reference)
    assert model.active_adapter == "birds"
    model.delete_adapter("birds")
    assert model.active_adapter == "cars" and "birds" not in model.peft_config
    assert torch.equal(model(x), expected["cars"])
    with pytest.raises(AdapterNotFoundError):
        model.set_adapter("birds")


def _adapter_bytes(model, name: str) -> int:
    total = 0
    for _, layer in model.adapter_layers():
        for tensor in layer.state_tensors(name) if name in layer.adapter_names else []:
            total += tensor.numel() * tensor.element_size()
    return total


def test_loaded_adapters_stay_bit_packed_in_memory(tmp_path):
    _three_tasks(lambda: tiny_timm("test_resnet"), tmp_path)
    model = PiggybackModel.from_pretrained(
        tiny_timm("test_resnet"), tmp_path / "cars", adapter_name="cars"
    )
    model.load_adapter(tmp_path / "flowers", adapter_name="flowers")
    model.eval()
    masked = sum(layer.weight.numel() for _, layer in model.adapter_layers())
    packed = sum(math.ceil(layer.weight.numel() / 8) for _, layer in model.adapter_layers())
    for name in ("cars", "flowers"):
        assert _adapter_bytes(model, name) == packed  # 1 bit per masked weight, nothing expanded
        for _, layer in model.adapter_layers():
            assert all(t.dtype == torch.uint8 for t in layer.state_tensors(name))
    assert packed <= masked / 8 + len(list(model.adapter_layers()))
    # Only the active task is materialised, once: one weight-sized buffer per masked layer.
    merged = [layer.merged_weight for _, layer in model.adapter_layers()]
    layers = [layer for _, layer in model.adapter_layers()]
    assert all(
        m is not None and m.shape == lay.weight.shape for m, lay in zip(merged, layers, strict=True)
    )


def test_eval_materialises_once_and_training_recomputes(tmp_path):
    model, x, _ = _three_tasks(lambda: tiny_timm("test_resnet"), tmp_path)
    model.set_adapter("cars")
    layer = next(layer for _, layer in model.adapter_layers())
    first = layer.merged_weight
    model(x)
    assert layer.merged_weight is first  # not recomputed by the forward
    model.set_adapter("flowers")
    assert layer.merged_weight is not first
    model.train()
    assert layer.merged_weight is None  # no stale weight kept while training


@pytest.mark.parametrize(
    "factory", [lambda: tiny_timm("test_efficientnet"), lambda: tiny_transformers("resnet")]
)
def test_merge_and_unload_gives_a_plain_equal_model(tmp_path, factory):
    model, x, expected = _three_tasks(factory, tmp_path)
    merged = model.merge_and_unload("flowers")
    assert type(merged) is type(model.base_model)
    assert not any(type(m).__module__.startswith("pb_adapters") for m in merged.modules())
    merged.eval()
    out = call(merged, x)
    assert torch.equal(out, expected["flowers"])
    # The wrapper and its other tasks are untouched.
    assert model.active_adapter == "birds"
    for name in CLASS_COUNTS:
        model.set_adapter(name)
        assert torch.equal(call(model, x), expected[name])
    # The merged model saves with its own library's tooling.
    if hasattr(merged, "save_pretrained"):
        merged.save_pretrained(tmp_path / "merged")
        reloaded = type(merged).from_pretrained(tmp_path / "merged").eval()
        assert torch.equal(reloaded(pixel_values=x).logits, expected["flowers"])
        assert reloaded.config.id2label[0] == "flowers-0"
    else:
        import timm

        torch.save(merged.state_dict(), tmp_path / "merged.pth")
        fresh = timm.create_model(
            "test_efficientnet", num_classes=5, checkpoint_path=str(tmp_path / "merged.pth")
        )
        assert torch.equal(fresh.eval()(x), expected["flowers"])


def test_torch_compile_switches_without_stale_outputs_or_recompiles(tmp_path):
    import torch._dynamo

    model, x, expected = _three_tasks(lambda: tiny_timm("test_resnet"), tmp_path)
    model.add_adapter("cars2", PiggybackConfig(num_labels=3))  # same shapes as "cars"
    _train(model, "cars2", seed=5)
    model.set_adapter("cars2")
    expected["cars2"] = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        model.set_adapter("cars")
        torch.testing.assert_close(compiled(x), expected["cars"], rtol=0, atol=1e-6)
        # Same-shaped tasks share the compiled graph: switching must not recompile.
        torch._dynamo.config.error_on_recompile = True
        try:
            model.set_adapter("cars2")
            torch.testing.assert_close(compiled(x), expected["cars2"], rtol=0, atol=1e-6)
            model.set_adapter("cars")
            torch.testing.assert_close(compiled(x), expected["cars"], rtol=0, atol=1e-6)
        finally:
            torch._dynamo.config.error_on_recompile = False
        # A head of another width recompiles once, and is never stale.
        model.set_adapter("flowers")
        torch.testing.assert_close(compiled(x), expected["flowers"], rtol=0, atol=1e-6)
        model.set_adapter("cars")
        torch.testing.assert_close(compiled(x), expected["cars"], rtol=0, atol=1e-6)


def test_eval_outputs_follow_scores_changed_while_in_eval_mode():
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=3)).eval()
    x = _images()
    with torch.no_grad():
        before = model(x)
    # An optimiser step taken while the model is in eval mode (frozen-BN style training).
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(6) % 3)
    loss.backward()
    params = [p for group in model.parameter_groups().values() for p in group]
    torch.optim.Adam(params, lr=1e-1).step()
    with torch.no_grad():
        after = model(x)
        model.train()
        model.eval()  # a full refresh
        refreshed = model(x)
    assert not torch.equal(after, before)
    assert torch.equal(after, refreshed)
