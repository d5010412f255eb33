"""Processes killed with SIGKILL at random points: saves and training resume safely.

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
from tests.reliability import children
from tests.reliability.artifacts import micro_base

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fork are POSIX")
ROUNDS = int(os.environ.get("PB_KILL_ROUNDS", "0"))


@pytest.fixture(scope="module")
def ctx() -> multiprocessing.context.BaseContext:
    """Children forked from this process: warm, so each starts in milliseconds.

    Tests run single-threaded (``OMP_NUM_THREADS=1``), which keeps forking after torch safe;
    every wait on a child is bounded, so a stuck child fails the test rather than hanging it.
    """
    return multiprocessing.get_context("fork")


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
    for _ in range(rounds):
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=children.save_versions, args=(str(folder), last + 1, send))
        child.start()
        assert receive.poll(60), "the child did not start"
        receive.recv()
        time.sleep(rng.uniform(0.0, 0.25))  # a few saves long: kills land anywhere in a save
        child.kill()
        child.join(60)
        assert child.exitcode is not None, "the child did not die"
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
        version = _check_artifact(folder)
        assert version >= last  # the previous artifact or a newer one, never an older one
        seen["new version" if version > last else "previous version"] += 1
        seen["temporary files left" if leftovers else "clean folder"] += 1
        last = version
    # the next save clears what killed saves left behind
    children.versioned_model(last + 1).save_pretrained(folder, metrics={"version": last + 1})
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".prev")]
    assert _check_artifact(folder) == last + 1
    print(f"save kill points: {rounds}, outcomes: {dict(seen)}")


def test_training_killed_at_random_steps_resumes_bit_exact(ctx, tmp_path: Path) -> None:
    rounds = ROUNDS or 3
    rng = random.Random(1)
    data = str(children.write_image_folder(tmp_path / "data"))
    reference = children.make_trainer(data, str(tmp_path / "reference"))
    reference.train()
    expected = children.trained_state(reference)

    out = tmp_path / "killed"
    total_steps = 8
    killed_at = []
    for round_index in range(rounds):
        resume = "latest" if latest_checkpoint(out) is not None else None
        log = tmp_path / f"log{round_index}.json"
        child = ctx.Process(target=children.train, args=(data, str(out), resume, str(log)))
        child.start()
        target = rng.randint(1, total_steps - 1)
        deadline = time.monotonic() + 120
        while child.is_alive() and time.monotonic() < deadline:
            found = latest_checkpoint(out)
            if found is not None and int(found.name.split("-")[1]) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))  # into the next step or the next checkpoint's write
        child.kill()
        child.join(60)
        assert child.exitcode is not None, "the child did not die"
        found = latest_checkpoint(out)
        assert found is not None
        state = json.loads((found / "trainer_state.json").read_text())
        # a run that finished first was not killed; the next round resumes its last checkpoint
        killed_at.append("finished" if log.exists() else state["global_step"])
    resumed = children.make_trainer(data, str(out), "latest")
    resumed.train()
    got = children.trained_state(resumed)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert any(v.dtype == torch.bool and not v.all() for v in got.values())  # masks did change
    print(f"training kill points (last checkpoint step at each kill): {killed_at}")
