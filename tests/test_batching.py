"""Mixed-task batches computed inside the layers: equal to per-task runs, in about one pass."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import KSMConfig, PackNetConfig, PiggybackConfig
from pb_adapters.errors import ConfigError
from pb_adapters.model import BASE_ADAPTER_NAME
from tests.factories import (
    assert_mixed_close,
    call,
    call_task,
    count_ops,
    frozen_tasks,
    tiny_timm,
    tiny_transformers,
)

NAMES = ["a", "b", "c"]
CLASSES = [3, 5, 2]
# Shuffled, unbalanced (groups are padded to the largest) and with the plain base.
ROUTE = ["b", "a", BASE_ADAPTER_NAME, "c", "b", "b", "a", "c", BASE_ADAPTER_NAME, "b"]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _mixed(model, x, names):
    # The fused route on every device (by default the CPU runs one pass per task instead).
    model.serving.mixed_mode = "fused"
    is_transformers = type(model.base_model).__module__.startswith("transformers")
    with torch.no_grad():
        if is_transformers:
            return model(pixel_values=x, adapter_names=names)
        return model(x, adapter_names=names)


def _check_against_per_task_runs(model, x, names):
    active = model.active_adapter
    out = _mixed(model, x, names)
    mixed = out if isinstance(out, torch.Tensor) else out.logits
    assert model.active_adapter == active
    with torch.no_grad():
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            alone = call_task(model, name, x[rows])
            width = alone.shape[1]
            assert_mixed_close(mixed[rows, :width], alone)
            assert torch.all(mixed[rows, width:] == float("-inf"))
        model.set_adapter(active)
    return out


FACTORIES = {
    "timm-resnet": tiny_timm,
    "timm-efficientnet": lambda: tiny_timm("tf_efficientnet_lite0"),
    "timm-vit": lambda: tiny_timm("test_vit"),
    "hf-vit": lambda: tiny_transformers("vit"),
    "hf-resnet": lambda: tiny_transformers("resnet"),
    "hf-convnext": lambda: tiny_transformers("convnext"),
}


@pytest.mark.parametrize("base", list(FACTORIES))
def test_mixed_batch_equals_per_task_runs_on_every_base(tmp_path, base):
    model = frozen_tasks(FACTORIES[base], PiggybackConfig, NAMES, tmp_path, CLASSES)
    model.serving.budget_bytes = 4 * model.serving.task_bytes
    out = _check_against_per_task_runs(model, _images(len(ROUTE)), ROUTE)
    if base.startswith("hf"):
        assert type(out).__name__.startswith("ImageClassifierOutput")


@pytest.mark.parametrize(
    ("config_cls", "config"),
    [(PiggybackConfig, {"mask_type": "ternary"}), (KSMConfig, {}), (PackNetConfig, {})],
    ids=["ternary", "ksm", "packnet"],
)
def test_mixed_batch_equals_per_task_runs_for_every_method(tmp_path, config_cls, config):
    model = frozen_tasks(tiny_timm, config_cls, NAMES, tmp_path, CLASSES, **config)
    model.serving.budget_bytes = 4 * model.serving.task_bytes
    _check_against_per_task_runs(model, _images(len(ROUTE)), ROUTE)


@pytest.mark.parametrize("base", ["timm-resnet", "timm-vit", "hf-convnext"])
def test_per_task_norms_are_per_task_in_mixed_batches(tmp_path, base):
    model = frozen_tasks(
        FACTORIES[base], PiggybackConfig, NAMES, tmp_path, CLASSES, train_norms=True
    )
    # Distinct norms per task: otherwise the check could not tell them apart.
    with torch.no_grad():
        for index, name in enumerate(NAMES):
            for module in model.task_modules[name].values():
                for tensor in (*module.parameters(), *module.buffers()):
                    if tensor.is_floating_point():
                        tensor.add_(0.05 * (index + 1))
    model.serving.budget_bytes = 4 * model.serving.task_bytes
    _check_against_per_task_runs(model, _images(len(ROUTE)), ROUTE)


def test_bank_grows_for_a_mixed_batch_and_shrinks_back_to_the_budget(tmp_path):
    model = frozen_tasks(tiny_timm, PiggybackConfig, NAMES, tmp_path, CLASSES)
    serving = model.serving
    assert serving.budget_bytes is None and serving.bank_bytes == serving.task_bytes
    _check_against_per_task_runs(model, _images(len(ROUTE)), ROUTE)
    assert serving.bank_bytes == serving.task_bytes  # back to the active task only
    x = _images(2)
    with torch.no_grad():
        model.set_adapter("b")
        before = model(x)
        _mixed(model, _images(len(ROUTE)), ROUTE)
        assert torch.equal(model(x), before)  # the active task's weights were put back
        for _, layer in model.adapter_layers():
            assert torch.equal(layer.merged_weight, layer.inference_weight("b"))


def _ops_ratio(model, x, names) -> float:
    with torch.no_grad():
        _mixed(model, x, names)  # warm: every task held, stacked heads built
        mixed = count_ops(lambda: _mixed(model, x, names)).total
        single = count_ops(lambda: call(model, x)).total
    return mixed / single


@pytest.mark.parametrize(("base", "limit"), [("timm-efficientnet", 1.6), ("timm-vit", 1.1)])
def test_a_mixed_batch_dispatches_about_one_forward_of_operations(tmp_path, base, limit):
    tasks = ["a", "b", "c", "d"]
    model = frozen_tasks(FACTORIES[base], PiggybackConfig, tasks, tmp_path, [3, 5, 2, 3])
    model.serving.budget_bytes = 4 * model.serving.task_bytes
    x = _images(12)
    shuffled = [
        tasks[i] for i in torch.randperm(12, generator=torch.Generator().manual_seed(1)) % 4
    ]
    four = _ops_ratio(model, x, shuffled)
    two = _ops_ratio(model, x, [tasks[i % 2] for i in range(12)])
    assert four <= limit  # not four forward passes
    assert abs(four - two) < 0.05  # nor growing with the number of tasks


def test_trainable_tasks_with_gradients_run_per_task(tmp_path):
    model = frozen_tasks(tiny_transformers, PiggybackConfig, NAMES, tmp_path, CLASSES)
    model.add_adapter("d", PiggybackConfig(num_labels=3))
    x = _images(4)
    names = ["d", "a", "d", "b"]
    # Gradients on and a task that trains: one pass per task, exactly the per-task outputs.
    out = model(pixel_values=x, adapter_names=names).logits
    model.set_adapter("d")
    assert torch.equal(out[[0, 2], :3], model(pixel_values=x[[0, 2]]).logits)


class _StandardisedConv(torch.nn.Conv2d):
    """A convolution with its own forward (like timm's StdConv2d): computed group by group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) * 0.5
        return self._conv_forward(x, weight, self.bias)


def _custom_base() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        _StandardisedConv(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect", bias=True),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()


def test_layers_with_their_own_forward_and_padding_modes(tmp_path):
    config = {"target_modules": ["0", "2", "5"]}
    model = frozen_tasks(_custom_base, PiggybackConfig, NAMES, tmp_path, [None] * 3, **config)
    assert [layer.forward_kind for layer in model.serving.layers] == ["generic", "conv", "linear"]
    model.serving.budget_bytes = 4 * model.serving.task_bytes
    _check_against_per_task_runs(model, _images(len(ROUTE)), ROUTE)


def test_mixed_mode_chooses_fused_or_per_task_passes(tmp_path):
    model = frozen_tasks(tiny_timm, PiggybackConfig, NAMES, tmp_path, CLASSES)
    serving = model.serving
    assert serving.mixed_mode == "auto"
    assert not serving.fuses_mixed(torch.device("cpu"))
    assert serving.fuses_mixed(torch.device("cuda"))
    with pytest.raises(ConfigError, match="mixed_mode"):
        serving.mixed_mode = "grouped"
    assert serving.mixed_mode == "auto"
    serving.budget_bytes = 4 * serving.task_bytes
    x, names = _images(len(ROUTE)), ROUTE
    with torch.no_grad():
        fused = _mixed(model, x, names)
        serving.mixed_mode = "per_task"
        per_task = model(x, adapter_names=names)
        ops = count_ops(lambda: model(x, adapter_names=names)).total
        single = count_ops(lambda: model(x)).total
    assert_mixed_close(per_task, fused)
    # One pass per task present (three tasks and the plain base), every task's weights held.
    assert 3.5 * single <= ops <= 4.5 * single
