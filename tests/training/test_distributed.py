"""Real training processes (gloo on CPU) through ``accelerate launch``.

The ranks run on the CPU whatever ``PB_TEST_DEVICE`` says (the worker asks Accelerate for it): the
test needs two ranks, and a one-GPU machine cannot give each one its own GPU.

``accelerate launch --multi_gpu --num_processes 2`` starts two ranks even without a GPU (while
``--cpu --num_processes 2`` silently starts one). Both ranks must end with identical masks, equal
to a single-process run over the same global batch, and a 2-process run resumed from a checkpoint
must end exactly where the uninterrupted one did. Two launchers side by side (``--num_machines 2
--machine_rank 0/1``) stand for two machines of two processes each, and must end where one
machine of four processes does. A run sharded with FSDP2 must write the artifact a DDP run
writes, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.devices import child_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
ARTIFACT = ("adapter_model.safetensors", "adapter_config.json")


def _env() -> dict[str, str]:
    env = child_env(OMP_NUM_THREADS="1")  # the ranks import the pb_adapters under test
    env.pop("ACCELERATE_CONFIG_FILE", None)
    return env


def _free_port() -> int:
    # a port of our own: parallel runs on the machine must not meet on the default 29500
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_together(commands: list[list[str]], logs: Path) -> None:
    """Start ``commands`` at once (the launchers of one job), wait for all; fail with their logs."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, cmd in enumerate(commands):
        # output to files, not pipes: a launcher blocked on a full pipe would stall the others
        with open(logs / f"launcher-{i}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(timeout=600))
    finally:
        for proc in procs:
            if proc.poll() is None:  # the launcher and every rank it started
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = "".join(f.read_text()[-3000:] for f in sorted(logs.glob("launcher-*.log")))
    assert codes == [0] * len(commands), text


def _launch(
    out: Path,
    batch_size: int,
    processes: int,
    *extra: str,
    machines: int = 1,
    launcher: Sequence[str] = ("--multi_gpu",),
) -> None:
    """Train with the worker script into ``out`` (one process: without a launcher)."""
    worker = [str(WORKER), str(out), str(batch_size), *extra]
    if processes == 1:
        _run_together([[sys.executable, *worker]], out / "logs")
    else:
        _accelerate_launch(worker, out / "logs", processes, machines, launcher)


def _accelerate_launch(
    script: list[str], logs: Path, processes: int, machines: int, launcher: Sequence[str]
) -> None:
    """Run ``script`` (path and arguments) in ``processes`` ranks over ``machines`` launchers."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher,
        "--num_processes", str(processes), "--num_machines", str(machines),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    if machines == 1:
        _run_together([[*command, *script]], logs)
        return
    machine = ["--main_process_ip", "127.0.0.1", "--machine_rank"]
    _run_together([[*command, *machine, str(r), *script] for r in range(machines)], logs)


def _rank(out: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    return (
        load_file(out / f"rank-{rank}.safetensors"),
        json.loads((out / f"rank-{rank}.json").read_text()),
    )


def _masks(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.startswith("mask:")}


def _resume_from_step_4(finished: Path, resumed: Path) -> None:
    """Copy ``finished``'s run into ``resumed`` with checkpoints 1-4 only: the run stopped mid-way
    through epoch 2."""
    shutil.copytree(finished / "run", resumed / "run")
    checkpoints = sorted((resumed / "run" / "checkpoints").glob("step-*"))
    assert [p.name for p in checkpoints][-1] == "step-00000006"
    for later in checkpoints[4:]:
        shutil.rmtree(later)


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
    _resume_from_step_4(runs / "two", resumed)
    _launch(resumed, 8, 2, "--resume")
    (full, _), (again, meta) = _rank(runs / "two", 0), _rank(resumed, 0)
    assert meta["num_processes"] == 2
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)


# ------------------------------------------------------------------------------ two machines


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("four-processes")
    _launch(root / "one-machine", 4, processes=4)
    _launch(root / "two-machines", 4, processes=4, machines=2)
    return root


def test_two_machines_match_one_machine_of_four_processes(four: Path, runs: Path) -> None:
    ranks = [_rank(four / "two-machines", r) for r in range(4)]
    # two launchers of two processes each, joined into one group of four
    assert [m["machine_rank"] for _, m in ranks] == [0, 0, 1, 1]
    assert {(m["num_processes"], m["local_world_size"]) for _, m in ranks} == {(4, 2)}
    (first, meta), (single, m_single) = ranks[0], _rank(four / "one-machine", 0)
    assert m_single["machine_rank"] == 0 and m_single["local_world_size"] == 4
    for tensors, _ in ranks[1:]:
        assert tensors.keys() == first.keys() and all(
            torch.equal(tensors[k], first[k]) for k in first
        )
    # the same ranks reduce in the same order whichever machine they run on: bit for bit
    assert first.keys() == single.keys()
    assert all(torch.equal(first[k], single[k]) for k in first)
    for key in ("best_epoch", "validation", "test"):
        assert meta[key] == m_single[key]
    # and the same mask bits as one process with the whole global batch of 16
    one, _ = _rank(runs / "one", 0)
    assert all(torch.equal(first[k], one[k]) for k in _masks(first))


# ------------------------------------------------------------------------------ FSDP


@pytest.fixture(scope="module")
def sharded(runs: Path) -> Path:
    _launch(runs / "fsdp", 8, 2, "--fsdp")
    _resume_from_step_4(runs / "fsdp", runs / "fsdp-resumed")
    _launch(runs / "fsdp-resumed", 8, 2, "--fsdp", "--resume")
    return runs


def _same_artifact(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in ARTIFACT)


def test_fsdp_shards_the_scores_and_writes_the_ddp_artifact(sharded: Path) -> None:
    ranks = [json.loads((sharded / f"fsdp/rank-{r}.json").read_text()) for r in range(2)]
    total = ranks[0]["trainable_total"]
    # each process held its own slice of the trainable state, and the slices add up
    assert all(m["sharded"] and 0 < m["trainable_local"] < total for m in ranks)
    assert sum(m["trainable_local"] for m in ranks) == total
    ddp, ddp_meta = _rank(sharded / "two", 0)
    fsdp, fsdp_meta = _rank(sharded / "fsdp", 0)
    assert not ddp_meta["sharded"] and ddp_meta["trainable_local"] == total
    assert fsdp.keys() == ddp.keys() and all(torch.equal(fsdp[k], ddp[k]) for k in ddp)
    for key in ("best_epoch", "validation", "test"):
        assert fsdp_meta[key] == ddp_meta[key]
    assert _same_artifact(sharded / "fsdp" / "run", sharded / "two" / "run")
    # checkpoints hold each process's slice of the best epoch's state
    step = sharded / "fsdp/run/checkpoints/step-00000006"
    assert sorted(p.name for p in step.glob("best_state*")) == [
        "best_state.shard-00000.safetensors",
        "best_state.shard-00001.safetensors",
    ]
    # and of the model and the optimiser's moments; nothing but safetensors and JSON
    names = sorted(p.name for p in step.iterdir())
    for kind in ("model", "optimizer"):
        assert [n for n in names if n.startswith(f"{kind}.shard-")] == [
            f"{kind}.shard-00000.safetensors",
            f"{kind}.shard-00001.safetensors",
        ]
    assert all(n.endswith((".safetensors", ".json")) for n in names), names


def test_fsdp_resume_ends_with_the_same_artifact(sharded: Path) -> None:
    assert _same_artifact(sharded / "fsdp-resumed" / "run", sharded / "fsdp" / "run")
    again, _ = _rank(sharded / "fsdp-resumed", 0)
    full, _ = _rank(sharded / "fsdp", 0)
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_fsdp_command_line_reports_the_figures_of_its_artifact(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    options = [
        "--model", "test_resnet", "--dataset", "demo", "--output-dir", str(out),
        "--epochs", "1", "--max-steps-per-epoch", "3", "--max-train-samples", "96",
        "--max-eval-samples", "24", "--image-size", "32", "--batch-size", "8",
        "--num-workers", "0", "--no-progress", "--report-to", "none", "--mask-lr", "0.004", "--lr-scheduler", "constant",
    ]  # fmt: skip
    script = [str(Path(__file__).with_name("cli_fsdp_worker.py")), *options]
    _accelerate_launch(script, out / "logs", 2, 1, ("--multi_gpu",))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reload_matches"] is True
    # the sparsity and sizes printed after training are those of the whole model, as saved
    from pb_adapters import PiggybackModel
    from pb_adapters.training.cli import create_backbone

    saved = PiggybackModel.from_pretrained(create_backbone("test_resnet", seed=0), out)
    stats = saved.mask_stats()
    assert stats.zeros > 0
    assert summary["mask_zeros_fraction"] == stats.total
    assert summary["num_mask_entries"] == stats.num_masked
    assert summary["mask_bytes"] == saved.adapter_size()["mask_bytes"]


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="Accelerate's launcher shards with FSDP only on GPU-type devices; needs 2 CUDA GPUs",
)
def test_fsdp_on_two_gpus_writes_the_ddp_artifact(tmp_path: Path) -> None:
    fsdp_flags = [
        "--use_fsdp", "--fsdp_version", "2",
        "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "BasicBlock,Bottleneck",
    ]  # fmt: skip
    _launch(tmp_path / "ddp", 8, 2, "--gpu")
    _launch(tmp_path / "fsdp", 8, 2, "--gpu", "--fsdp", launcher=fsdp_flags)
    ranks = [json.loads((tmp_path / f"fsdp/rank-{r}.json").read_text()) for r in range(2)]
    assert all(m["sharded"] and m["trainable_local"] < m["trainable_total"] for m in ranks)
    ddp, _ = _rank(tmp_path / "ddp", 0)
    fsdp, _ = _rank(tmp_path / "fsdp", 0)
    assert all(torch.equal(fsdp[k], ddp[k]) for k in _masks(ddp))
    assert _same_artifact(tmp_path / "fsdp" / "run", tmp_path / "ddp" / "run")
