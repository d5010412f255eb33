"""The wrapper's state_dict: every tensor once, and an exact load_state_dict round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from tests.factories import call, tiny_timm, tiny_transformers, train_steps


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _two_tasks(kind: str, seed: int = 0) -> PiggybackModel:
    """Two tasks with per-task norms, so heads and norms are swapped into the base."""
    torch.manual_seed(seed)
    base = tiny_timm("test_resnet") if kind == "timm" else tiny_transformers("resnet")
    wrapped = get_piggyback_model(base, PiggybackConfig(num_labels=3, train_norms=True))
    wrapped.add_adapter("other", PiggybackConfig(num_labels=2))
    return wrapped


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_state_dict_names_each_tensor_once_and_round_trips(tmp_path, kind):
    trained = _two_tasks(kind)
    train_steps(trained, _images(), torch.tensor([0, 1, 2, 0]))
    state = trained.state_dict()
    storages = [t.untyped_storage().data_ptr() for t in state.values() if t.numel()]
    assert len(storages) == len(set(storages))
    head = trained.head_paths[0]
    assert not [k for k in state if k.startswith(f"base_model.{head}.")]
    save_file(state, tmp_path / "model.safetensors")  # refused for shared tensors before

    fresh = _two_tasks(kind, seed=1)  # other random heads
    x = _images()
    trained.eval()
    fresh.eval()
    assert not torch.equal(call(fresh, x), call(trained, x))
    result = fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(call(fresh, x), call(trained, x))
    for name in ("other", "default"):
        fresh.set_adapter(name)
        trained.set_adapter(name)
        assert torch.equal(call(fresh, x), call(trained, x))


def test_state_dict_is_the_same_whichever_task_is_active():
    wrapped = _two_tasks("timm")
    before = wrapped.state_dict()
    wrapped.set_adapter("other")
    after = wrapped.state_dict()
    with wrapped.disable_adapter():
        disabled = wrapped.state_dict()
    assert before.keys() == after.keys() == disabled.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_dict_naming_the_head_inside_the_base_loads_too():
    # The layout of files written before, which named the active head inside the base model.
    trained = _two_tasks("timm")
    train_steps(trained, _images(), torch.tensor([0, 1, 2, 0]))
    head = trained.head_paths[0]
    own = f"task_modules.default.{head}."
    state = {
        k.replace(own, f"base_model.{head}.") if k.startswith(own) else k: v
        for k, v in trained.state_dict().items()
    }
    assert f"base_model.{head}.weight" in state
    fresh = _two_tasks("timm", seed=1)
    result = fresh.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = _images()
    assert torch.equal(call(fresh.eval(), x), call(trained.eval(), x))
