"""The run state a checkpoint saves and a resumed run restores, as one object."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from pb_adapters.training.run_state import (
    BEST_STATE_FILE,
    STATE_FILE,
    RunState,
    load_rng_state,
    save_rng_state,
)


def test_the_state_round_trips_through_json_and_safetensors(tmp_path: Path) -> None:
    state = RunState(epoch=2, batches_in_epoch=1, global_step=4, accelerate_step=4, ema=0.5)
    assert state.consider(1, {"top1": 0.5, "loss": 1.0})
    assert not state.consider(2, {"top1": 0.5, "loss": 1.5})  # same top-1, higher loss
    assert state.consider(3, {"top1": 0.5, "loss": 0.9})
    state.history.append({"epoch": 1, "train_loss": 1.2})
    state.partial = {"loss_sum": 3.0, "hits": [2], "count": 16, "lrs": {"masks": 1e-4}}
    state.best_state = {"head.weight": torch.randn(3, 2)}
    state.save(tmp_path, args={"seed": 0})
    data = json.loads((tmp_path / STATE_FILE).read_text())
    assert data["args"] == {"seed": 0} and data["best_key"] == [0.5, -0.9]
    assert "best_state" not in data and (tmp_path / BEST_STATE_FILE).is_file()
    loaded = RunState.load(tmp_path)
    assert loaded == state  # every JSON field (best_state is compared apart)
    assert torch.equal(loaded.best_state["head.weight"], state.best_state["head.weight"])
    assert RunState.from_dict({**data, "unknown": 1}) == state


def test_random_states_are_saved_without_pickle(tmp_path: Path) -> None:
    path = tmp_path / "rng.safetensors"
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    save_rng_state(path)
    expected = (torch.rand(3), random.random(), np.random.rand())
    load_rng_state(path)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]
