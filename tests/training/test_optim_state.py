"""Model, optimiser, schedule and loss-scaler state written as safetensors + JSON and read back
checked: SGD and Adam (with and without amsgrad) continue bit-exactly, a run that does not fit
is refused before anything changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pb_adapters.training.checkpoint_io import CheckpointReader, file_manifest
from pb_adapters.training.errors import CheckpointError
from pb_adapters.training.optim_state import read_training_state, write_training_state


def _setup(kind: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    groups = [
        {"name": "first", "params": list(model[0].parameters()), "lr": 0.05},
        {"name": "rest", "params": [*model[1].parameters(), *model[2].parameters()], "lr": 0.01},
    ]
    if kind == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=0.9, **options)
    else:
        optimizer = torch.optim.Adam(groups, **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step // 2))
    return model, optimizer, scheduler


def _steps(model, optimizer, scheduler, n: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(n):
        x = torch.randn(8, 4, generator=generator)
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def _save(folder: Path, model, optimizer, scheduler, scaler=None) -> CheckpointReader:
    names = write_training_state(folder, model, optimizer, scheduler, scaler)
    return CheckpointReader(folder, file_manifest(folder, names))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("kind", "options"),
    [("sgd", {}), ("adam", {}), ("adam", {"amsgrad": True, "weight_decay": 0.01})],
)
def test_a_restored_run_continues_bit_exactly(kind: str, options: dict, tmp_path: Path) -> None:
    model, optimizer, scheduler = _setup(kind, **options)
    _steps(model, optimizer, scheduler, 3, seed=1)
    reader = _save(tmp_path, model, optimizer, scheduler)
    _steps(model, optimizer, scheduler, 3, seed=2)  # the uninterrupted run
    expected = _state(model)

    fresh = _setup(kind, seed=5, **options)  # other initial weights, no optimiser state
    before = _state(fresh[0])
    state = read_training_state(reader, *fresh)
    assert all(torch.equal(v, before[k]) for k, v in fresh[0].state_dict().items())  # unchanged
    state.apply()
    assert fresh[2].last_epoch == 3 and fresh[1].param_groups[0]["lr"] == 0.05 * 0.5
    _steps(*fresh, 3, seed=2)
    got = _state(fresh[0])
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_a_tied_tensor_is_stored_once(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = nn.Sequential(nn.Linear(4, 3))
    model.add_module("alias", model[0])  # the same module under a second name (a task head)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    reader = _save(tmp_path, model, optimizer, scheduler)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == {"0.weight", "0.bias"}
    read_training_state(reader, model, optimizer, scheduler).apply()  # both names restored


def test_a_run_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    model, optimizer, scheduler = _setup("adam")
    _steps(model, optimizer, scheduler, 2, seed=1)
    reader = _save(tmp_path, model, optimizer, scheduler)
    cases = {
        "another optimiser": (_setup("sgd"), "not this run's SGD"),
        "amsgrad state": (_setup("adam", amsgrad=True), "hyperparameter|keys"),
        "another betas": (_setup("adam"), "3 values"),
    }
    for name, (live, message) in cases.items():
        if name == "another betas":  # a tuple of another length than the saved one
            live[1].param_groups[0]["betas"] = (0.5, 0.9, 0.1)
        before = _state(live[0])
        with pytest.raises(CheckpointError, match=message):
            read_training_state(reader, *live)
        assert all(torch.equal(v, before[k]) for k, v in live[0].state_dict().items())
    # other parameter names: a renamed module
    other = nn.Sequential()
    other.add_module("a", nn.Linear(4, 6))
    other.add_module("b", nn.BatchNorm1d(6))
    other.add_module("c", nn.Linear(6, 3))
    opt = torch.optim.Adam(
        [
            {"name": "first", "params": list(other.a.parameters()), "lr": 0.05},
            {"name": "rest", "params": [*other.b.parameters(), *other.c.parameters()], "lr": 0.01},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    with pytest.raises(CheckpointError, match="does not fit this run"):
        read_training_state(reader, other, opt, sched)


def test_the_loss_scaler_round_trips(tmp_path: Path) -> None:
    model, optimizer, scheduler = _setup("adam")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    scaler.scale(torch.ones(()))  # the scale exists once used
    scaler.update(new_scale=256.0)
    reader = _save(tmp_path, model, optimizer, scheduler, scaler)
    fresh_scaler = torch.amp.GradScaler("cpu")
    read_training_state(reader, *_setup("adam"), fresh_scaler).apply()
    assert fresh_scaler.get_scale() == 256.0 and fresh_scaler.get_growth_interval() == 3
    with pytest.raises(CheckpointError, match="fp16 loss scaling"):
        read_training_state(reader, *_setup("adam"))
