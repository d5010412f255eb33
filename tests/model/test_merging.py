"""merge_adapter / unmerge_adapter (in place, reversible) and unload (the base as it was)."""

from __future__ import annotations

import pytest
import torch

from pb_adapters import ConfigError, PbAdaptersError, PiggybackConfig, get_piggyback_model
from pb_adapters.methods.base import AdapterLayer
from pb_adapters.serialization import ARTIFACT_WEIGHTS_NAME
from tests.factories import call, tiny_timm, tiny_transformers, train_steps


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _trained(base):
    wrapped = get_piggyback_model(base, PiggybackConfig(num_labels=3))
    wrapped.add_adapter("other", PiggybackConfig(num_labels=2))
    # A large learning rate so that the masks really drop weights.
    train_steps(wrapped, _images(), torch.tensor([0, 1, 2, 0]), steps=3, lr=0.05)
    assert wrapped.mask_stats().zeros > 0
    return wrapped


def _base_weights(wrapped) -> dict[str, torch.Tensor]:
    return {p: layer.base_layer.weight.detach().clone() for p, layer in wrapped.adapter_layers()}


@pytest.mark.parametrize("make", [tiny_timm, tiny_transformers], ids=["timm", "transformers"])
def test_merge_computes_the_task_and_unmerge_restores_every_weight(make):
    wrapped = _trained(make())
    x = _images()
    expected = call(wrapped, x)
    originals = _base_weights(wrapped)
    state = wrapped.state_dict()
    wrapped.merge_adapter()
    assert torch.equal(call(wrapped, x), expected)
    # The base model alone now computes the task: every masked layer computes with its weight.
    changed = [p for p, w in _base_weights(wrapped).items() if not torch.equal(w, originals[p])]
    assert changed
    assert all(layer.disabled for _, layer in wrapped.adapter_layers())
    merged_state = wrapped.state_dict()  # the unmerged state, not the merged weights
    assert all(torch.equal(merged_state[k], v) for k, v in state.items())
    wrapped.unmerge_adapter()
    after = _base_weights(wrapped)
    assert all(torch.equal(after[p], w) for p, w in originals.items())
    assert torch.equal(call(wrapped, x), expected)
    wrapped.unmerge_adapter()  # nothing merged: nothing to do


def test_merged_model_saves_the_same_artifact(tmp_path):
    wrapped = _trained(tiny_timm()).eval()
    wrapped.save_pretrained(tmp_path / "unmerged", write_card=False)
    wrapped.merge_adapter()
    wrapped.save_pretrained(tmp_path / "merged", write_card=False)
    files = [tmp_path / d / ARTIFACT_WEIGHTS_NAME for d in ("unmerged", "merged")]
    assert files[0].read_bytes() == files[1].read_bytes()


def test_merged_model_refuses_to_change_or_train():
    wrapped = _trained(tiny_timm()).eval()
    wrapped.merge_adapter(["other"])
    assert wrapped.active_adapter == "other"
    for action in (
        lambda: wrapped.set_adapter("default"),
        lambda: wrapped.add_adapter("third", PiggybackConfig(num_labels=2)),
        lambda: wrapped.delete_adapter("default"),
        lambda: wrapped.train(),
        lambda: wrapped.merge_adapter(["default"]),
        lambda: wrapped.merge_and_unload(),
        lambda: wrapped.load_state_dict(wrapped.state_dict()),
        lambda: wrapped(_images(), adapter_names=["other"] * 4),
    ):
        with pytest.raises(PbAdaptersError, match="unmerge_adapter"):
            action()
    with pytest.raises(PbAdaptersError, match="unmerge_adapter"), wrapped.disable_adapter():
        pass
    wrapped.merge_adapter(["other"])  # already merged: nothing to do
    wrapped.unmerge_adapter()
    wrapped.set_adapter("default")


def test_merge_one_adapter_at_a_time_in_eval_mode():
    wrapped = _trained(tiny_timm())
    with pytest.raises(ConfigError, match="one adapter at a time"):
        wrapped.merge_adapter(["default", "other"])
    wrapped.train()
    with pytest.raises(PbAdaptersError, match="eval"):
        wrapped.merge_adapter()


def _num_labels(model) -> int:
    return model.config.num_labels if hasattr(model, "config") else model.num_classes


@pytest.mark.parametrize("make", [tiny_timm, tiny_transformers], ids=["timm", "transformers"])
def test_unload_returns_the_base_exactly_as_it_was(make):
    base = make()
    next(base.parameters()).requires_grad_(False)  # flags of both kinds to restore
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    state = {k: v.clone() for k, v in base.state_dict().items()}
    x = _images()
    expected = call(base, x)
    labels = _num_labels(base)
    wrapped = _trained(base)
    wrapped.eval()
    wrapped.merge_adapter()
    plain = wrapped.unload()
    assert plain is base
    assert not [m for m in plain.modules() if isinstance(m, AdapterLayer)]
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
    now = plain.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())
    assert torch.equal(call(plain.eval(), x), expected)
    assert _num_labels(plain) == labels
    assert wrapped.peft_config == {} and wrapped.active_adapters == []
