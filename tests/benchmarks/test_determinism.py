"""The determinism benchmark times the same step inside and outside deterministic algorithms."""

from __future__ import annotations

import torch

from benchmarks import determinism, report
from tests.benchmarks.test_report import MACHINE


def test_the_timed_step_runs_under_deterministic_algorithms_and_they_are_undone() -> None:
    seen = []
    step = determinism._inside(lambda: seen.append(torch.are_deterministic_algorithms_enabled()))
    before = torch.are_deterministic_algorithms_enabled()
    step()
    assert seen == [True]
    assert torch.are_deterministic_algorithms_enabled() == before
    fills = []
    determinism._inside(
        lambda: fills.append(torch.utils.deterministic.fill_uninitialized_memory), fill=False
    )()
    assert fills == [False] and torch.utils.deterministic.fill_uninitialized_memory


def test_the_section_shows_both_steps_and_their_ratio() -> None:
    data = {
        "machine": MACHINE,
        "image_size": 64,
        "batch": 32,
        "repeats": 15,
        "step_seconds": {"default": 0.5, "deterministic": 0.55},
        "deterministic_over_default": 1.1,
        "without_fill_over_default": 1.01,
    }
    text = "\n".join(report.determinism_section(data))
    assert "| 500.0 ms | 550.0 ms | 1.100 | 1.01x |" in text
