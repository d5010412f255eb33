"""The run state a checkpoint saves and a resumed run restores, as one object."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from pb_adapters.training.checkpoint_io import CheckpointReader, file_manifest
from pb_adapters.training.run_state import (
    BEST_STATE_FILE,
    STATE_FILE,
    RunState,
    best_state_file,
    read_rng_state,
    rng_state,
    rng_state_file,
    save_best_state,
    save_rng_state,
    set_rng_state,
)


def test_the_state_round_trips_through_json_and_safetensors(tmp_path: Path) -> None:
    state = RunState(epoch=2, batches_in_epoch=1, global_step=4, accelerate_step=4, ema=0.5)
    assert state.consider(1, {"top1": 0.5, "loss": 1.0})
    assert not state.consider(2, {"top1": 0.5, "loss": 1.5})  # same top-1, higher loss
    assert state.consider(3, {"top1": 0.5, "loss": 0.9})
    state.history.append({"epoch": 1, "train_loss": 1.2})
    state.partial = {"loss_sum": 3.0, "hits": [2], "count": 16, "lrs": {"masks": 1e-4}}
    state.best_state = {"head.weight": torch.randn(3, 2)}
    save_best_state(state.best_state, tmp_path)
    state.save(tmp_path, args={"seed": 0}, files=[BEST_STATE_FILE])
    data = json.loads((tmp_path / STATE_FILE).read_text())
    assert data["args"] == {"seed": 0} and data["best_key"] == [0.5, -0.9]
    assert "best_state" not in data and (tmp_path / BEST_STATE_FILE).is_file()
    assert set(data["files"]) == {BEST_STATE_FILE}  # the manifest: size and hash of each file
    loaded = RunState.from_checked_dict(data)
    assert loaded == state  # every JSON field (best_state is compared apart)
    reader = CheckpointReader(tmp_path, data["files"])
    tensors, _ = reader.tensors(BEST_STATE_FILE, "best state", {"head.weight": (None, (3, 2))})
    assert torch.equal(tensors["head.weight"], state.best_state["head.weight"])
    assert RunState.from_dict({**data, "unknown": 1}) == state


def test_random_states_are_saved_without_pickle(tmp_path: Path) -> None:
    name = rng_state_file(0)
    assert name == "rng_state_0.safetensors"
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    save_rng_state(tmp_path / name)
    expected = (torch.rand(3), random.random(), np.random.rand())
    reader = CheckpointReader(tmp_path, file_manifest(tmp_path, [name]))
    before = rng_state()
    state = read_rng_state(reader, 0)
    after = rng_state()  # reading (and checking on throwaway generators) changed nothing
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    assert (before["numpy"][1] == after["numpy"][1]).all()
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


def test_each_fsdp_process_writes_and_reads_its_own_slice(tmp_path: Path) -> None:
    slices = {rank: {"w": torch.full((2, 3), float(rank))} for rank in (0, 1)}
    for rank, tensors in slices.items():
        save_best_state(tensors, tmp_path, shard=rank)
    save_best_state(None, tmp_path, shard=2)  # no best epoch yet: nothing written
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [best_state_file(0), best_state_file(1)]
    assert names == ["best_state.shard-00000.safetensors", "best_state.shard-00001.safetensors"]
    reader = CheckpointReader(tmp_path, file_manifest(tmp_path, names))
    for rank, tensors in slices.items():
        got, _ = reader.tensors(best_state_file(rank), "best", {"w": (torch.float32, (2, 3))})
        assert torch.equal(got["w"], tensors["w"])
