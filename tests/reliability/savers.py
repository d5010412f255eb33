"""Processes that save into one folder while others save or read it (spawned, not forked).

Spawned children start a fresh interpreter: nothing is shared with the test process but the
folder, as with two users' scripts.
"""

from __future__ import annotations

import tempfile
from multiprocessing.synchronize import Barrier, Event

from pb_adapters import PiggybackModel
from tests.reliability.artifacts import trained


def versioned(version: int) -> PiggybackModel:
    """The adapter of save number ``version``: its own masks, head and variant."""
    return trained("ternary" if version % 2 else "norms", seed=5000 + version)


def save_in_rounds(folder: str, writer: int, writers: int, rounds: int, barrier: Barrier) -> None:
    """Round ``r``: wait for every writer and the test, save version ``r * writers + writer``
    (with its card in odd rounds), then wait again while the test loads what is there."""
    for round_index in range(rounds):
        version = round_index * writers + writer
        model = versioned(version)
        barrier.wait(timeout=120)
        model.save_pretrained(folder, metrics={"version": version}, write_card=round_index % 2 == 1)
        barrier.wait(timeout=120)


def save_until(folder: str, first: int, started: Event, stop: Event) -> None:
    """Save versions ``first, first + 1, ...`` (every fifth with its card) until ``stop``."""
    version = first
    model = versioned(version)
    with tempfile.TemporaryDirectory() as scratch:  # the first card imports its libraries
        model.save_pretrained(scratch)
    started.set()
    while not stop.is_set():
        model.save_pretrained(folder, metrics={"version": version}, write_card=version % 5 == 0)
        version += 1
        model = versioned(version)
