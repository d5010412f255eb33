"""PackNet layers: zero forgetting, per-layer pruning ratios, ownership and the eval cache."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import ConfigError, PackNetConfig, PiggybackModel
from pb_adapters.methods.packnet import PackNetLayer, finalize_task, prune_task
from tests.factories import call, tiny_timm

from .conftest import add_task, train


def _owned(model, index):
    """Per layer: the packed values of the entries owned by task ``index`` (cloned)."""
    return {
        path: layer.packed[layer.owner == index].clone() for path, layer in model.adapter_layers()
    }


def _outputs(model, x, names):
    out = {}
    for name in names:
        model.set_adapter(name)
        with torch.no_grad():
            out[name] = call(model, x).clone()
    return out


def test_zero_forgetting_bit_exact_across_three_tasks(batch):
    x, y = batch
    base = tiny_timm()
    pristine = {k: v.clone() for k, v in base.state_dict().items()}
    model = PiggybackModel(base)
    add_task(model, "t1", x, y, optimizer="sgd")
    weights = {1: _owned(model, 1)}
    before = _outputs(model, x, ["t1"])
    # Task 2 trains with SGD momentum 0.9 and weight decay, task 3 with Adam and weight decay:
    # neither may move a single bit of an earlier task's weights, outputs or heads.
    add_task(model, "t2", x, (y + 1) % 3, optimizer="sgd")
    weights[2] = _owned(model, 2)
    assert all(
        torch.equal(a, b)
        for a, b in zip(_owned(model, 1).values(), weights[1].values(), strict=True)
    )
    before |= _outputs(model, x, ["t2"])
    assert torch.equal(_outputs(model, x, ["t1"])["t1"], before["t1"])
    add_task(model, "t3", x, (y + 2) % 3, optimizer="adam")
    after = _outputs(model, x, ["t1", "t2", "t3"])
    for index in (1, 2):
        now = _owned(model, index)
        assert all(torch.equal(now[p], weights[index][p]) for p in now)
        assert sum(v.numel() for v in now.values()) > 0
    for name in ("t1", "t2"):
        assert torch.equal(after[name], before[name])
    assert not torch.equal(after["t3"], after["t2"])  # task 3 did learn something
    # the base model itself is never written
    with model.disable_adapter():
        state = model.base_model.state_dict()
    unwrapped = {k.replace(".base_layer", ""): v for k, v in state.items()}
    assert all(torch.equal(unwrapped[k], v) for k, v in pristine.items() if k in unwrapped)


def test_earlier_weights_get_no_gradient_while_a_task_trains(batch):
    x, y = batch
    model = PiggybackModel(tiny_timm())
    add_task(model, "t1", x, y)
    model.add_adapter("t2", PackNetConfig(num_labels=3))
    model.set_adapter("t2")
    model.train()
    torch.nn.functional.cross_entropy(call(model, x), y).backward()
    total = 0.0
    for _, layer in model.adapter_layers():
        grad = layer.free["t2"].grad
        assert grad is not None and bool((grad[layer.owner == 1] == 0).all())
        assert not layer.packed.requires_grad  # earlier weights are buffers, out of reach
        total += float(grad.abs().sum())
    assert total > 0  # the free weights do learn


@pytest.mark.parametrize("ratio", [0.75, 0.4])
def test_pruning_ratio_is_honoured_per_layer(batch, ratio):
    x, y = batch
    model = PiggybackModel(tiny_timm())
    add_task(model, "t1", x, y, ratio=0.5)
    free_before = {p: int((layer.owner == 0).sum()) for p, layer in model.adapter_layers()}
    model.add_adapter("t2", PackNetConfig(num_labels=3, prune_ratio=ratio))
    model.set_adapter("t2")
    train(model, x, y)
    history = prune_task(model, "t2")
    assert model.peft_config["t2"].pruned_fraction == history
    finalize_task(model, "t2")
    for path, layer in model.adapter_layers():
        kept = int((layer.owner == 2).sum())
        expected_pruned = round(ratio * free_before[path])
        assert free_before[path] - kept == expected_pruned
        assert history[path] == pytest.approx(expected_pruned / free_before[path])
        # released entries are zero and free again; kept ones are untouched by task 1
        assert bool((layer.packed[layer.owner == 0] == 0).all())
        assert int((layer.owner == 0).sum()) == expected_pruned


def test_pruned_weights_are_the_smallest_and_zero_for_the_task(batch):
    x, y = batch
    model = PiggybackModel(tiny_timm())
    model.add_adapter("t1", PackNetConfig(num_labels=3))
    model.set_adapter("t1")
    train(model, x, y)
    layer = next(layer for _, layer in model.adapter_layers())
    magnitude = layer.free["t1"].detach().abs().clone()
    prune_task(model, "t1")
    kept = layer.claims["t1"]
    assert magnitude[kept].min() >= magnitude[~kept].max()
    train(model, x, y)  # momentum and weight decay keep running on the pruned entries...
    weight = layer.effective_weight("t1")
    assert bool((weight[~kept] == 0).all())  # ...but the task never sees them


def test_task_uses_weights_of_earlier_tasks_only(batch):
    x, y = batch
    model = PiggybackModel(tiny_timm())
    for name in ("t1", "t2"):
        add_task(model, name, x, y, ratio=0.5)
    for _, layer in model.adapter_layers():
        w1, w2 = layer.effective_weight("t1"), layer.effective_weight("t2")
        assert torch.equal(w1[layer.owner == 2], torch.zeros_like(w1[layer.owner == 2]))
        assert torch.equal(w2[layer.owner == 1], layer.packed[layer.owner == 1])
        assert layer.used_entries("t1").sum() < layer.used_entries("t2").sum()


def test_unpruned_last_task_takes_every_free_weight(batch):
    x, y = batch
    model = PiggybackModel(tiny_timm())
    add_task(model, "t1", x, y)
    add_task(model, "t2", x, y, prune=False)
    assert model.mask_stats("t2").zeros == 0
    assert all(bool((layer.owner > 0).all()) for _, layer in model.adapter_layers())


def test_a_second_task_waits_until_the_first_is_packed(batch):
    model = PiggybackModel(tiny_timm())
    model.add_adapter("t1", PackNetConfig(num_labels=3))
    with pytest.raises(ConfigError, match="still training"):
        model.add_adapter("t2", PackNetConfig(num_labels=3))
    assert list(model.peft_config) == ["t1"]
    with pytest.raises(ConfigError, match="task_index"):
        finalize_task(model, "t1")
        model.add_adapter("t2", PackNetConfig(num_labels=3, task_index=5))


def test_deleting_the_newest_task_frees_its_slot(batch):
    x, y = batch
    model = PiggybackModel(tiny_timm())
    add_task(model, "t1", x, y)
    owners = [layer.owner.clone() for _, layer in model.adapter_layers()]
    add_task(model, "t2", x, y)
    model.delete_adapter("t2")
    assert all(
        torch.equal(o, layer.owner)
        for o, (_, layer) in zip(owners, model.adapter_layers(), strict=True)
    )
    model.add_adapter("t2b", PackNetConfig(num_labels=3))
    assert model.peft_config["t2b"].task_index == 2


def test_layers_are_packnet_layers_and_eval_cache_follows_packing(batch):
    x, y = batch
    model = PiggybackModel(tiny_timm())
    model.add_adapter("t1", PackNetConfig(num_labels=3))
    model.set_adapter("t1")
    assert all(isinstance(layer, PackNetLayer) for _, layer in model.adapter_layers())
    train(model, x, y)
    with torch.no_grad():
        trained = call(model, x)
    prune_task(model, "t1")
    finalize_task(model, "t1")
    with torch.no_grad():
        packed = call(model, x)
    assert not torch.equal(trained, packed)  # pruning changed the weights the cache must see
    model.train()
    with torch.no_grad():
        model.eval()
        assert torch.equal(call(model, x), packed)
