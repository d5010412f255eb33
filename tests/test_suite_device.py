"""The suite's own device switch (``PB_TEST_DEVICE``) and the import path of child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pb_adapters
from tests import devices


def test_the_switch_reads_cpu_or_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(devices.VARIABLE, raising=False)
    assert devices.requested() == "cpu"  # CI's default
    monkeypatch.setenv(devices.VARIABLE, " CUDA ")
    assert devices.requested() == "cuda"
    monkeypatch.setenv(devices.VARIABLE, "tpu")
    with pytest.raises(ValueError, match="PB_TEST_DEVICE='tpu': use one of cpu, cuda"):
        devices.requested()


def test_this_run_sees_exactly_the_devices_it_asked_for(device: torch.device) -> None:
    assert device == devices.suite_device()
    if device.type == "cpu":
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()
    else:
        assert torch.cuda.is_available()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")


def test_cuda_without_a_gpu_stops_the_run_with_a_clear_message(tmp_path: Path) -> None:
    env = devices.child_env(PB_TEST_DEVICE="cuda", CUDA_VISIBLE_DEVICES="")  # no GPU anywhere
    this_file = str(Path(__file__).relative_to(devices.REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            this_file,
        ],
        cwd=devices.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "PB_TEST_DEVICE=cuda, but torch" in proc.stderr
    assert "sees no CUDA device" in proc.stderr


def test_children_import_the_code_under_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a parent that found pb_adapters through sys.path alone (no PYTHONPATH), a child elsewhere
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = devices.child_env()
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [
        str(Path(pb_adapters.__file__).resolve().parents[1]),
        str(devices.REPO),
    ]
    code = "import pb_adapters, tests.devices; print(pb_adapters.__file__)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == Path(pb_adapters.__file__).resolve()
