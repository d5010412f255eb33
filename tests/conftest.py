"""Test configuration: never reach the internet, keep the Hugging Face cache in a temp folder,
run on the device ``PB_TEST_DEVICE`` names (``cpu``, the default, or ``cuda``; see tests/devices.py).
"""

from __future__ import annotations

import logging
import os
import tempfile

# Set before any Hugging Face library is imported: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="pb-adapters-hf-home-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny tensors: torch's thread hand-offs cost more than they save (several times slower on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from tests import devices
from tests.factories import tiny_timm, tiny_transformers

__all__ = ["tiny_timm", "tiny_transformers"]

# The local Hub server's fixtures (``hub``, ``hub_server``).
pytest_plugins = ["tests.hub_server"]

# Before anything touches CUDA: hide the GPUs (cpu), or fix the cuBLAS workspace (cuda).
try:
    _DEVICE: str | None = devices.requested()
    _DEVICE_ERROR = None
except ValueError as err:
    _DEVICE, _DEVICE_ERROR = None, str(err)
else:
    devices.prepare_environment(_DEVICE)


def pytest_configure(config: pytest.Config) -> None:
    problem = _DEVICE_ERROR or devices.check_available(_DEVICE)
    if problem:
        raise pytest.UsageError(problem)


def pytest_report_header(config: pytest.Config) -> str:
    if _DEVICE == "cuda":
        return f"{devices.VARIABLE}: cuda ({torch.cuda.get_device_name(0)})"
    return f"{devices.VARIABLE}: {_DEVICE} (GPUs hidden; PB_TEST_DEVICE=cuda runs on CUDA)"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the trainer uses in this run (``PB_TEST_DEVICE``)."""
    return devices.suite_device()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def transformers_logs(caplog):
    """transformers' warnings as log records (its logger does not propagate them by default)."""
    import transformers

    transformers.utils.logging.enable_propagation()
    caplog.set_level(logging.WARNING)
    yield caplog
    transformers.utils.logging.disable_propagation()
