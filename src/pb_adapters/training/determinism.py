"""Deterministic algorithms for bit-exact runs on every device, and seeded data-loader workers.

On the CPU a resumed run already ends bit-identical to an uninterrupted one. On CUDA some
kernels sum in an order that changes from one call to the next (atomic adds in scatter and index
backward passes, some cuDNN convolution algorithms, cuBLAS with a workspace shared by streams);
:func:`enable_determinism` makes torch pick deterministic kernels, and raise where an operation
has none, until its undo is called::

    with deterministic():
        trainer.train()

cuBLAS reads its workspace setting when torch first uses it in a process, so the setting made
here only takes effect if no CUDA matrix product has run yet. Where one may have (a long-lived
process, a notebook), start the process with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` instead; torch
otherwise refuses the first such product with an error that names the variable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

CUBLAS_WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
# One of the two settings NVIDIA documents as deterministic: 8 buffers of 4 MiB per stream.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def enable_determinism() -> Callable[[], None]:
    """Make torch use deterministic algorithms; return a function that restores the settings.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=False)`` (an operation without a
    deterministic implementation raises instead of silently differing), cuDNN's
    ``deterministic=True`` and ``benchmark=False`` (benchmarking may pick another algorithm per
    run), and ``CUBLAS_WORKSPACE_CONFIG`` when it is not set already (see the module notes).

    Returns:
        A function without arguments that puts all four settings back as they were.
    """
    cudnn = torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get(CUBLAS_WORKSPACE_VARIABLE),
    )
    os.environ.setdefault(CUBLAS_WORKSPACE_VARIABLE, CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True, warn_only=False)
    cudnn.deterministic, cudnn.benchmark = True, False

    def undo() -> None:
        algorithms, warn_only, cudnn_deterministic, cudnn_benchmark, workspace = before
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        cudnn.deterministic, cudnn.benchmark = cudnn_deterministic, cudnn_benchmark
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE_VARIABLE, None)
        else:
            os.environ[CUBLAS_WORKSPACE_VARIABLE] = workspace

    return undo


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Deterministic algorithms inside the ``with`` block (:func:`enable_determinism`).

    Args:
        enabled: False makes this a no-op, so callers can pass a setting through.
    """
    undo = enable_determinism() if enabled else None
    try:
        yield
    finally:
        if undo is not None:
            undo()


def loader_generator(seed: int) -> torch.Generator:
    """A generator for ``DataLoader(generator=...)`` that makes its workers' seeds depend on
    ``seed`` alone.

    Each time a loader starts iterating it draws a base seed, from which torch seeds every
    worker's torch, Python and NumPy generators (``base_seed + worker_id``), and a default
    shuffling sampler draws its order. Without a generator both come from the global torch RNG,
    which couples the model's random numbers to how often loaders were iterated.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
