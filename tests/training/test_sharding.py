"""FSDP helpers in one process: refusing FSDP1, file names, and doing nothing without FSDP.

Sharded runs themselves (FSDP2 over two gloo processes, and on two GPUs where present) are in
``test_distributed.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pb_adapters import ConfigError, PiggybackConfig, get_piggyback_model
from pb_adapters.training.sharding import (
    check_supported,
    full_parameters,
    is_sharded,
    keep_weights_sharded,
    load_best_slice,
    local_tensor,
    reshard,
    save_best_slice,
    uses_fsdp,
)
from tests.factories import tiny_timm


def _accelerator(distributed_type: str, fsdp_version: int | None = None) -> SimpleNamespace:
    plugin = None if fsdp_version is None else SimpleNamespace(fsdp_version=fsdp_version)
    return SimpleNamespace(
        distributed_type=distributed_type, state=SimpleNamespace(fsdp_plugin=plugin)
    )


def test_fsdp1_is_refused_with_the_flag_to_use():
    with pytest.raises(ConfigError, match="--fsdp_version 2"):
        check_supported(_accelerator("FSDP", fsdp_version=1))
    check_supported(_accelerator("FSDP", fsdp_version=2))
    check_supported(_accelerator("MULTI_GPU"))
    check_supported(_accelerator("NO"))


def test_the_distributed_type_enum_compares_as_its_name():
    # check_supported compares with the string: Accelerate's enum must stay a str enum
    from accelerate.utils import DistributedType

    assert DistributedType.FSDP == "FSDP"


def test_each_process_writes_and_reads_its_own_slice(tmp_path):
    assert uses_fsdp(_accelerator("FSDP", 2)) and not uses_fsdp(_accelerator("MULTI_GPU"))
    slices = {rank: {"w": torch.full((2, 3), float(rank))} for rank in (0, 1)}
    for rank, tensors in slices.items():
        save_best_slice(tensors, tmp_path, rank)
    save_best_slice(None, tmp_path, 2)  # no best epoch yet: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_state.shard-00000.safetensors",
        "best_state.shard-00001.safetensors",
    ]
    for rank, tensors in slices.items():
        assert torch.equal(load_best_slice(tmp_path, rank)["w"], tensors["w"])
    assert load_best_slice(tmp_path, 2) is None


def test_without_fsdp_every_helper_leaves_the_model_alone():
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=3)).eval()
    assert not is_sharded(model)
    params = {name: p for name, p in model.named_parameters()}
    keep_weights_sharded(model)
    reshard(model)
    _, layer = next(model.adapter_layers())
    assert layer.merged_weight is not None  # the eval cache stays on
    with full_parameters(model, is_main_process=True):
        assert all(p is params[n] for n, p in model.named_parameters())
    scores = layer.mask_scores[layer.active_adapter]
    assert local_tensor(scores) is scores
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
