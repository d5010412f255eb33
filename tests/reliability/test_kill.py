"""Processes killed with SIGKILL at random points: saves and training resume safely.

After every kill of a training run, the newest complete checkpoint must pass all the checks a
resume makes (manifest sizes and hashes, names, dtypes, shapes) without falling back.

``PB_KILL_ROUNDS`` sets how many children each test kills (default 12 saves, 3 training runs).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from pb_adapters import PiggybackModel
from pb_adapters.serialization import read_adapter_config
from pb_adapters.training.trainer import latest_checkpoint
from pb_adapters.utils.files import LOCK_NAME
from tests.devices import same_tensors
from tests.reliability import children
from tests.reliability.artifacts import micro_base

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and a fork server are POSIX")
ROUNDS = int(os.environ.get("PB_KILL_ROUNDS", "0"))


@pytest.fixture(scope="module")
def ctx() -> multiprocessing.context.BaseContext:
    """Children forked from a fork server that has imported :mod:`children`: warm, so each
    starts in milliseconds, and CUDA-safe.

    The server is a fresh interpreter (started like ``spawn``) that never touches CUDA, so its
    children may use CUDA even after this process did (a child forked from a process that
    initialised CUDA cannot). Plain ``spawn`` would import torch anew for every child: about 15
    times slower here. Every wait on a child is bounded, so a stuck child fails the test rather
    than hanging it.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([children.__name__])
    return context


def _masks(model: PiggybackModel) -> dict[str, torch.Tensor]:
    return {path: layer.mask("default") for path, layer in model.adapter_layers()}


def _check_artifact(folder: Path) -> int:
    """Load the artifact in ``folder``; return its version after checking it is that version's."""
    version = read_adapter_config(folder)["metrics"]["version"]
    loaded = PiggybackModel.from_pretrained(micro_base(), folder)
    expected = children.versioned_model(version)
    got, want = _masks(loaded), _masks(expected)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got), f"version {version}: other masks"
    return version


def test_save_pretrained_killed_at_random_points(ctx, tmp_path: Path) -> None:
    rounds = ROUNDS or 12
    rng = random.Random(0)
    folder = tmp_path / "artifact"
    children.versioned_model(0).save_pretrained(folder, metrics={"version": 0})
    seen = Counter()
    last = 0
    left_before: set[str] = set()
    for _ in range(rounds):
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=children.save_versions, args=(str(folder), last + 1, send))
        child.start()
        assert receive.poll(60), "the child did not start"
        receive.recv()
        time.sleep(rng.uniform(0.0, 0.5))  # a few saves long: kills land anywhere in a save
        child.kill()
        child.join(60)
        assert child.exitcode is not None, "the child did not die"
        hidden = {p.name for p in folder.iterdir() if p.name.startswith(".")} - {LOCK_NAME}
        leftovers = hidden - left_before
        left_before |= leftovers
        version = _check_artifact(folder)
        assert version >= last  # the previous artifact or a newer one, never an older one
        seen["new version" if version > last else "previous version"] += 1
        # a new temporary file or weights backup: the kill landed inside a file's write
        seen["killed mid-write" if leftovers else "killed between writes"] += 1
        last = version
    # the next save clears what killed saves left behind
    children.versioned_model(last + 1).save_pretrained(folder, metrics={"version": last + 1})
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".prev")]
    assert _check_artifact(folder) == last + 1
    print(f"save kill points: {rounds}, outcomes: {dict(seen)}")


def _step(out: Path) -> int:
    found = latest_checkpoint(out)
    return (
        0
        if found is None
        else json.loads((found / "trainer_state.json").read_text())["global_step"]
    )


def test_training_killed_at_random_steps_resumes_bit_exact(ctx, tmp_path: Path) -> None:
    rounds = ROUNDS or 3
    rng = random.Random(1)
    data = str(children.write_image_folder(tmp_path / "data"))
    expected = children.trained_state(children.run(data, str(tmp_path / "reference")))
    total_steps = 8

    def finish(out: Path) -> None:
        """Resume the killed run to its end here; it must end exactly as the reference."""
        got = children.trained_state(children.run(data, str(out), "latest"))
        assert same_tensors(got, expected), f"{out.name} differs"

    chain = 0
    out = tmp_path / "chain0"
    kills: list[tuple[int, str]] = []
    for round_index in range(rounds):
        current = _step(out)
        if current >= total_steps - 1:  # no step left to kill at: finish, start a new run
            finish(out)
            chain += 1
            out, current = tmp_path / f"chain{chain}", 0
        target = rng.randint(current + 1, total_steps - 1)
        log = tmp_path / f"log{round_index}.json"
        resume = "latest" if current else None
        child = ctx.Process(target=children.train, args=(data, str(out), resume, str(log)))
        child.start()
        deadline = time.monotonic() + 120
        while child.is_alive() and time.monotonic() < deadline and _step(out) < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))  # into the next step or the next checkpoint's write
        child.kill()
        child.join(60)
        assert child.exitcode is not None, "the child did not die"
        assert latest_checkpoint(out) is not None
        mid_write = any(
            p.name.startswith((".tmp-", ".old-")) for p in (out / "checkpoints").iterdir()
        )
        where = "finished" if log.exists() else "mid-checkpoint" if mid_write else "mid-step"
        kills.append((_step(out), where))
        # the newest complete checkpoint passes every check of a resume (no fallback needed)
        probe = children.make_trainer(data, str(out), "latest")
        probe.setup()
        assert probe._run is not None and probe._run.state.global_step == _step(out)
    finish(out)
    print(f"training kills (newest checkpoint step, where): {kills}; runs resumed: {chain + 1}")
