"""The serving benchmark's measurements run end to end on a tiny model (figures not checked:
they are timings; the operation counts are)."""

from __future__ import annotations

from benchmarks import multitask


def test_measure_speed_reports_every_ratio_and_operation_count(tmp_path):
    paths = multitask.make_tasks("test_resnet", multitask.TASKS, tmp_path)
    speed = multitask.measure_speed(
        "test_resnet", paths, "cpu", batch=8, repeats=1, large_repeats=1
    )
    assert speed["cache_supported"]
    for key in (
        "switch_held_over_forward",
        "switch_packed_over_floor",
        "mixed_over_one_task",
        "mixed_fused_over_one_task",
        "mixed_per_task_over_one_task",
        "mixed_default_budget_over_one_task",
    ):
        assert speed[key] > 0
    assert set(speed["precision"]) == {"1", "8"}
    ops = speed["ops"]
    assert ops["switch_held"] == 0
    assert ops["switch_packed"] < ops["masked_layers"]  # a constant, not one per layer
    assert ops["mixed_batch"] < 2 * ops["one_task_batch"]  # fused: about one pass
    assert ops["mixed_batch_per_task"] > 4 * ops["one_task_batch"]  # one pass per task
