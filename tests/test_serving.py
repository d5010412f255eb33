"""The serving cache: batched materialisation, switching cost, the byte budget, invalidation."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import ConfigError, KSMConfig, PackNetConfig, PiggybackConfig
from tests.factories import call, count_ops, frozen_tasks, tiny_timm, tiny_transformers

METHODS = {
    "piggyback": (PiggybackConfig, {}),
    "ternary": (PiggybackConfig, {"mask_type": "ternary"}),
    "ksm": (KSMConfig, {}),
    "packnet": (PackNetConfig, {}),
}
NAMES = ["a", "b", "c"]


def _model(tmp_path, method: str, factory=tiny_timm):
    config_cls, config = METHODS[method]
    return frozen_tasks(factory, config_cls, NAMES, tmp_path, **config)


@pytest.mark.parametrize("method", list(METHODS))
def test_batched_writer_is_bit_exact(tmp_path, method):
    model = _model(tmp_path, method)
    layers = [layer for _, layer in model.adapter_layers()]
    for name in NAMES:
        expected = [layer.inference_weight(name).reshape(-1) for layer in layers]
        writer = type(layers[0]).inference_writer(layers, name, {})
        targets = [torch.full_like(e, float("nan")) for e in expected]
        writer(targets, None)
        joined = torch.full((sum(e.numel() for e in expected),), float("nan"))
        writer(list(joined.split([e.numel() for e in expected])), joined)
        parts = joined.split([e.numel() for e in expected])
        for target, part, want in zip(targets, parts, expected, strict=True):
            assert torch.equal(target, want) and torch.equal(part, want)


@pytest.mark.parametrize("method", list(METHODS))
def test_switching_serves_every_layer_its_exact_weight(tmp_path, method):
    model = _model(tmp_path, method)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for name in ["b", "a", "c", "b"]:
            model.set_adapter(name)
            for _, layer in model.adapter_layers():
                assert layer.active_adapter == name
                assert torch.equal(layer.merged_weight, layer.inference_weight(name))
            merged = model.merge_and_unload(name).eval()
            assert torch.equal(model(x), merged(x)), name


def _switch_ops(model, name: str) -> int:
    with torch.no_grad():
        return count_ops(lambda: model.set_adapter(name)).total


@pytest.mark.parametrize("method", list(METHODS))
def test_a_switch_dispatches_a_few_operations_whatever_the_depth(tmp_path, method):
    counts = {}
    for depth, factory in (("shallow", tiny_timm), ("deep", lambda: tiny_timm("resnet18"))):
        model = _model(tmp_path / depth, method, factory)
        for name in NAMES:  # every task's plan once (views of its state, made once)
            model.set_adapter(name)
        layers = len(list(model.adapter_layers()))
        counts[depth] = (layers, _switch_ops(model, "a"), _switch_ops(model, "b"))
        # Switching back to a task the bank holds dispatches nothing at all.
        model.serving.budget_bytes = 3 * model.serving.task_bytes
        for name in NAMES:
            model.set_adapter(name)
        assert _switch_ops(model, "a") == 0 and _switch_ops(model, "b") == 0
    (shallow, *ops_shallow), (deep, *ops_deep) = counts["shallow"], counts["deep"]
    assert deep > shallow  # more masked layers ...
    assert ops_deep == ops_shallow  # ... same operations per switch
    assert max(ops_deep) <= 20  # KSM's dequantisation and spreading take the most


def test_transformers_bases_switch_in_constant_operations(tmp_path):
    model = _model(tmp_path, "piggyback", lambda: tiny_transformers("vit"))
    for name in NAMES:
        model.set_adapter(name)
    assert _switch_ops(model, "a") <= 6
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.set_adapter("c")
        merged = model.merge_and_unload("c").eval()
        assert torch.equal(call(model, x), call(merged, x))


def test_budget_holds_tasks_least_recently_used_first_and_is_reported(tmp_path):
    model = _model(tmp_path, "piggyback")
    serving = model.serving
    task = serving.task_bytes
    masked = sum(layer.weight.numel() for _, layer in model.adapter_layers())
    assert task == masked * 4  # float32 weights of every masked layer
    # Default: the active task only.
    assert serving.budget_bytes is None and serving.bank_bytes == task
    assert serving.held_tasks() == ["a"]
    info = {i.name: i for i in model.list_adapters()}
    assert info["a"].materialised_bytes == task and info["b"].materialised_bytes == 0
    stats = model.mask_stats("a")
    assert (stats.materialised_bytes, stats.cache_bytes, stats.cache_budget_bytes) == (
        task,
        task,
        None,
    )
    # Loaded in eval mode, every task's modules are in eval mode (switches leave modes alone).
    assert not any(module.training for module in model.task_modules.modules())
    # Inactive tasks stay packed: 1 bit per masked weight.
    for name in NAMES:
        packed = sum(
            t.numel() for _, layer in model.adapter_layers() for t in layer.state_tensors(name)
        )
        assert packed == sum((layer.weight.numel() + 7) // 8 for _, layer in model.adapter_layers())
    # Two tasks: switching between them writes nothing; a third evicts the least recent.
    serving.budget_bytes = 2 * task + 1
    model.set_adapter("b")
    model.set_adapter("a")
    writes = serving.counters["writes"]
    for name in ["b", "a", "b"]:
        model.set_adapter(name)
    assert serving.counters["writes"] == writes
    model.set_adapter("c")
    assert serving.held_tasks() == ["b", "c"] and serving.bank_bytes == 2 * task
    assert model.mask_stats("c").cache_budget_bytes == 2 * task + 1
    # Shrinking the budget keeps the active task.
    serving.budget_bytes = 0
    assert serving.held_tasks() == ["c"] and serving.bank_bytes == task
    for _, layer in model.adapter_layers():
        assert torch.equal(layer.merged_weight, layer.inference_weight("c"))


def test_ternary_tasks_stay_at_two_bits_per_weight(tmp_path):
    model = _model(tmp_path, "ternary")
    layers = [layer for _, layer in model.adapter_layers()]
    for name in NAMES:
        packed = sum(t.numel() for layer in layers for t in layer.state_tensors(name))
        assert packed == sum(2 * ((layer.weight.numel() + 7) // 8) for layer in layers)


@pytest.mark.parametrize("value", [-1, 1.5, "1GB", True])
def test_budget_must_be_a_byte_count(tmp_path, value):
    model = _model(tmp_path, "piggyback")
    with pytest.raises(ConfigError, match="budget_bytes"):
        model.serving.budget_bytes = value
    assert model.serving.budget_bytes is None


def test_cache_follows_base_writes_casts_and_training(tmp_path):
    model = _model(tmp_path, "piggyback")
    x = torch.randn(2, 3, 32, 32)
    model.serving.budget_bytes = 3 * model.serving.task_bytes
    for name in NAMES:
        model.set_adapter(name)
    with torch.no_grad():
        # An in-place write to a base weight: the next switch re-materialises.
        layer = next(layer for _, layer in model.adapter_layers())
        layer.weight.mul_(2)
        model.set_adapter("a")
        assert torch.equal(layer.merged_weight, layer.inference_weight("a"))
        # A cast moves the weights: the bank is rebuilt in the new dtype on the next forward.
        model.double()
        out = model(x.double())
        assert out.dtype == torch.float64 and layer.merged_weight.dtype == torch.float64
        assert torch.equal(out, model.merge_and_unload("a").eval()(x.double()))
        model.float()
    # Training frees the bank; eval materialises the active task again.
    model.train()
    assert model.serving.bank_bytes == 0 and layer.merged_weight is None
    model.eval()
    assert torch.equal(layer.merged_weight, layer.inference_weight("a"))


def test_reloading_a_task_under_the_same_name_is_noticed(tmp_path):
    model = _model(tmp_path, "piggyback")
    model.serving.budget_bytes = 3 * model.serving.task_bytes
    for name in NAMES:
        model.set_adapter(name)
    model.delete_adapter("b")
    model.load_adapter(tmp_path / "c", adapter_name="b")  # "b" now holds c's masks
    model.set_adapter("b")
    for _, layer in model.adapter_layers():
        assert torch.equal(layer.merged_weight, layer.inference_weight("c"))


@pytest.mark.parametrize("budget_tasks", [1, 3])
def test_compiled_model_does_not_recompile_on_switches(tmp_path, budget_tasks):
    import torch._dynamo

    model = _model(tmp_path, "piggyback")
    model.serving.budget_bytes = budget_tasks * model.serving.task_bytes
    x = torch.randn(2, 3, 32, 32)
    expected = {}
    with torch.no_grad():
        for name in NAMES:
            model.set_adapter(name)
            expected[name] = model(x)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager")
        model.set_adapter("a")
        torch.testing.assert_close(compiled(x), expected["a"], rtol=0, atol=1e-6)
        torch._dynamo.config.error_on_recompile = True
        try:
            for name in ["b", "c", "a", "c"]:
                model.set_adapter(name)
                torch.testing.assert_close(compiled(x), expected[name], rtol=0, atol=1e-6)
        finally:
            torch._dynamo.config.error_on_recompile = False


def test_copies_keep_the_settings_and_serve_their_own_weights(tmp_path):
    import copy

    model = _model(tmp_path, "piggyback")
    model.serving.budget_bytes = 2 * model.serving.task_bytes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.set_adapter("b")
        twin = copy.deepcopy(model)
        assert twin.serving is not model.serving and twin.serving.budget_bytes == 2 * (
            model.serving.task_bytes
        )
        assert torch.equal(twin(x), model(x))
        twin.set_adapter("c")
        model.set_adapter("a")
        for _, layer in twin.adapter_layers():
            assert torch.equal(layer.merged_weight, layer.inference_weight("c"))
        assert twin.serving.layers[0] in list(twin.modules())
