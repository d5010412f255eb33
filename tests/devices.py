"""The device the suite runs on (``PB_TEST_DEVICE``) and what tests need to be device-aware.

``PB_TEST_DEVICE=cpu`` (the default, and CI's) hides every GPU from the test process and the
processes it starts, so a CUDA machine runs the suite as a CPU-only one does. ``PB_TEST_DEVICE=cuda``
leaves the GPUs visible: the trainer (through Accelerate) then trains on ``cuda:0``, and the
run stops at once with a clear message if torch sees no CUDA device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

VARIABLE = "PB_TEST_DEVICE"
CHOICES = ("cpu", "cuda")
REPO = Path(__file__).resolve().parents[1]


def requested() -> str:
    """The device ``PB_TEST_DEVICE`` asks for (``cpu`` when unset); ValueError for others."""
    name = os.environ.get(VARIABLE, "").strip().lower() or "cpu"
    if name not in CHOICES:
        raise ValueError(f"{VARIABLE}={name!r}: use one of {', '.join(CHOICES)}")
    return name


def prepare_environment(name: str) -> None:
    """Set what must be set before torch first touches CUDA in this process (and its children).

    cpu: no visible GPU. cuda: the deterministic cuBLAS workspace, which cuBLAS reads once per
    process, so that tests can turn deterministic algorithms on at any later point.
    """
    if name == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        from pb_adapters.training.determinism import (
            CUBLAS_WORKSPACE_CONFIG,
            CUBLAS_WORKSPACE_VARIABLE,
        )

        os.environ.setdefault(CUBLAS_WORKSPACE_VARIABLE, CUBLAS_WORKSPACE_CONFIG)


def check_available(name: str) -> str | None:
    """Why ``name`` cannot be used here (None when it can)."""
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        return (
            f"{VARIABLE}=cuda, but torch {torch.__version__} sees no CUDA device "
            f"(built with CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    if name == "cpu" and available:
        return f"{VARIABLE}=cpu, but a GPU stayed visible (CUDA was initialised before conftest)"
    return None


def suite_device() -> torch.device:
    """The device of this run."""
    return torch.device(requested())


def exactly(device: torch.device):
    """A context for runs that must be bit-exact: deterministic algorithms on CUDA.

    On the CPU a resumed run is bit-exact without them, and the tests keep showing that.
    """
    from pb_adapters.training.determinism import deterministic

    return deterministic(enabled=device.type == "cuda")


def cpu_copy(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies: snapshots that stay comparable wherever the model moves."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal`` of two tensors that may live on different devices (compared on the CPU)."""
    return torch.equal(a.detach().cpu(), b.detach().cpu())


def same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Same keys and bit-identical tensors, wherever each side lives."""
    return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a child Python process: this one's, with the same import path.

    The folder that holds the imported ``pb_adapters`` (``src/`` of a checkout, or
    site-packages) and the repository root (for ``tests``) come first on ``PYTHONPATH``, so a
    child imports the code under test even when this process found it through ``sys.path`` alone.
    """
    import pb_adapters

    env = dict(os.environ, **overrides)
    paths = [str(Path(pb_adapters.__file__).resolve().parents[1]), str(REPO)]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
