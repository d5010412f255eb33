"""Processes saving one folder at once, and readers during saves, always see one whole artifact.

Writers and the reader run in separate, spawned processes (fresh interpreters). Every load must
succeed and hold exactly the masks of the version its config names, one of those written.
``PB_CONCURRENT_ROUNDS`` sets the rounds of two writers (default 20) and ``PB_CONCURRENT_READS``
the loads during saves (default 60).
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from pb_adapters import PiggybackModel
from pb_adapters.serialization import read_adapter_config, read_artifact_files
from tests.reliability import savers
from tests.reliability.artifacts import micro_base

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the folder lock is POSIX fcntl")
ROUNDS = int(os.environ.get("PB_CONCURRENT_ROUNDS", "20"))
READS = int(os.environ.get("PB_CONCURRENT_READS", "60"))
WRITERS = 2


@pytest.fixture(scope="module")
def ctx() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("spawn")


def _masks(model: PiggybackModel) -> dict[str, torch.Tensor]:
    return {path: layer.mask("default") for path, layer in model.adapter_layers()}


def check_version(folder: Path, allowed: set[int]) -> int:
    """Load ``folder``; its masks must be those of the version its config names, in ``allowed``."""
    loaded = PiggybackModel.from_pretrained(micro_base(), folder)
    version = loaded._recorded["default"][0]["version"]
    assert version in allowed, f"version {version} was not written"
    expected = _masks(savers.versioned(version))
    got = _masks(loaded)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got), f"version {version}: other masks"
    return version


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        process.join(60)
        if process.is_alive():
            process.kill()
            process.join(10)


def test_two_writers_saving_one_folder_at_once(ctx, tmp_path: Path) -> None:
    folder = tmp_path / "artifact"
    barrier = ctx.Barrier(WRITERS + 1)
    writers = [
        ctx.Process(target=savers.save_in_rounds, args=(str(folder), w, WRITERS, ROUNDS, barrier))
        for w in range(WRITERS)
    ]
    for process in writers:
        process.start()
    winners = []
    try:
        for round_index in range(ROUNDS):
            barrier.wait(timeout=300)  # go: both save now
            barrier.wait(timeout=300)  # both saves returned
            written = {round_index * WRITERS + w for w in range(WRITERS)}
            version = check_version(folder, written)
            read_artifact_files(folder)  # the pair a push would upload is whole too
            assert not [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".bak"))]
            winners.append(version % WRITERS)
    finally:
        barrier.abort()
        _stop(writers)
    assert all(process.exitcode == 0 for process in writers)
    print(f"rounds: {ROUNDS}, last save won by writer: {winners}")


def test_readers_during_repeated_saves(ctx, tmp_path: Path) -> None:
    folder = tmp_path / "artifact"
    savers.versioned(0).save_pretrained(folder, metrics={"version": 0})
    started, stop = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=savers.save_until, args=(str(folder), 1, started, stop))
    writer.start()
    seen: list[int] = []
    try:
        assert started.wait(300), "the writer did not start"
        last = 0
        for _ in range(READS):
            version = check_version(folder, set(range(last, last + 10_000)))
            assert version >= last  # never an older artifact than one already seen
            seen.append(version)
            last = version
    finally:
        stop.set()
        _stop([writer])
    assert writer.exitcode == 0
    final = read_adapter_config(folder)["metrics"]["version"]
    assert final >= last
    distinct = len(set(seen))
    print(f"loads during saves: {READS}, distinct versions seen: {distinct}, saves: {final}")
    assert distinct > 1, "the reads did not overlap the saves"
