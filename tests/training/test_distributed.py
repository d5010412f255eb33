"""Two real training processes (gloo on CPU) through ``accelerate launch``.

The ranks run on the CPU whatever ``PB_TEST_DEVICE`` says (the worker asks Accelerate for it): the
test needs two ranks, and a one-GPU machine cannot give each one its own GPU.

``accelerate launch --multi_gpu --num_processes 2`` starts two ranks even without a GPU (while
``--cpu --num_processes 2`` silently starts one). Both ranks must end with identical masks, equal
to a single-process run over the same global batch, and a 2-process run resumed from a checkpoint
must end exactly where the uninterrupted one did.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.devices import child_env

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")


def _env() -> dict[str, str]:
    env = child_env(OMP_NUM_THREADS="1")  # the ranks import the pb_adapters under test
    env.pop("ACCELERATE_CONFIG_FILE", None)
    return env


def _free_port() -> int:
    # a port of our own: parallel runs on the machine must not meet on the default 29500
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path, batch_size: int, processes: int, *extra: str) -> None:
    if processes == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), str(WORKER),
        ]  # fmt: skip
    proc = subprocess.run(
        [*cmd, str(out), str(batch_size), *extra],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _rank(out: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    return (
        load_file(out / f"rank-{rank}.safetensors"),
        json.loads((out / f"rank-{rank}.json").read_text()),
    )


def _masks(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.startswith("mask:")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    _launch(root / "two", 8, processes=2)
    _launch(root / "one", 16, processes=1)
    return root


def test_two_ranks_end_with_identical_masks(runs: Path) -> None:
    (t0, m0), (t1, m1) = _rank(runs / "two", 0), _rank(runs / "two", 1)
    assert m0["num_processes"] == m1["num_processes"] == 2
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert m0 == m1
    # the run learned something: some mask entries were switched off
    assert sum(int((v == 0).sum()) for v in _masks(t0).values()) > 0


def test_two_processes_match_one_process_with_the_same_global_batch(runs: Path) -> None:
    (two, m_two), (one, m_one) = _rank(runs / "two", 0), _rank(runs / "one", 0)
    assert m_one["num_processes"] == 1
    # the same samples per optimiser step, reduced in another order: scores agree to float noise
    # and every mask bit is the same
    for key in _masks(two):
        assert torch.equal(two[key], one[key]), key
    for key in two:
        torch.testing.assert_close(two[key].float(), one[key].float(), rtol=0, atol=1e-5)
    assert m_two["best_epoch"] == m_one["best_epoch"]
    for split in ("validation", "test"):
        assert m_two[split]["num_samples"] == m_one[split]["num_samples"]
        assert m_two[split]["top1"] == m_one[split]["top1"]
        assert m_two[split]["loss"] == pytest.approx(m_one[split]["loss"], abs=1e-5)
    # training metrics are totals over both ranks, as in the single-process run
    lines = [json.loads(line) for line in (runs / "two/run/metrics.jsonl").read_text().splitlines()]
    single = [
        json.loads(line) for line in (runs / "one/run/metrics.jsonl").read_text().splitlines()
    ]
    assert [r.get("epoch") for r in lines] == [r.get("epoch") for r in single] == [1, 2, None]
    for a, b in zip(lines[:2], single[:2], strict=True):
        assert a["train_top1"] == b["train_top1"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


def test_two_process_resume_ends_with_the_same_masks(runs: Path) -> None:
    resumed = runs / "resumed"
    shutil.copytree(runs / "two" / "run", resumed / "run")
    checkpoints = sorted((resumed / "run" / "checkpoints").glob("step-*"))
    assert [p.name for p in checkpoints][-1] == "step-00000006"
    for later in checkpoints[4:]:  # keep steps 1-4: the run stopped mid-way through epoch 2
        shutil.rmtree(later)
    _launch(resumed, 8, 2, "--resume")
    (full, _), (again, meta) = _rank(runs / "two", 0), _rank(resumed, 0)
    assert meta["num_processes"] == 2
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)
