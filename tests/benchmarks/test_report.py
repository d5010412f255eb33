"""The benchmark report renders every result file it finds into the docs page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report

MACHINE = {
    "date": "2026-01-01T00:00:00+00:00",
    "device": "cpu",
    "cpu_count": 2,
    "torch_threads": 2,
    "torch": "2",
    "timm": "1",
    "transformers": "5",
    "pb_adapters": "0",
}


def _spread(mean: float, std: float = 0.0) -> dict[str, float]:
    return {"mean": mean, "std": std, "min": mean - std, "max": mean + std}


def test_accuracy_and_training_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "DOCS_PAGE", tmp_path / "benchmarks.md")
    rows = [
        {"task": "mnist-5k", "method": "piggyback", "seeds": 3,
         "test_accuracy": _spread(0.95, 0.01), "train_seconds": _spread(60),
         "validation_accuracy": _spread(0.94, 0.02), "weights_bytes": _spread(90000),
         "bits_per_backbone_weight": 0.2, "step_time_ratio": 1.0,
         "mask_zeros_fraction": _spread(0.02)},
        {"task": "mnist-5k", "method": "finetune", "seeds": 3,
         "test_accuracy": _spread(0.97, 0.005), "train_seconds": _spread(80)},
    ]  # fmt: skip
    (tmp_path / "accuracy-cpu.json").write_text(
        json.dumps(
            {
                "machine": MACHINE,
                "model": "lite0",
                "budget": {"epochs": 1, "max_train": 10, "batch_size": 32, "image_size": 64},
                "rows": rows,
            }
        )
    )
    training_rows = [
        {"image_size": 64, "batch_per_process": 32, "processes": p, "method": m,
         "trainable_parameters": 10, "step_seconds": s, "step_time_ratio_vs_finetune": r,
         "peak_growth_bytes": 2**20, "peak_memory_ratio_vs_finetune": 1.0}
        for p, m, s, r in [(1, "piggyback", 0.2, 1.25), (1, "finetune", 0.16, 1.0)]
    ]  # fmt: skip
    (tmp_path / "training-cpu.json").write_text(
        json.dumps({"machine": MACHINE, "model": "lite0", "rows": training_rows})
    )
    text = report.render().read_text()
    for name in ("accuracy.png", "training_cost.png"):
        image = tmp_path / "images" / "benchmarks" / name
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](images/benchmarks/{name})" in text
    assert "## Accuracy" in text and "## Training cost" in text
    row = "| piggyback | 95.0% ± 1.0 | 94.0% ± 2.0 | 90,000 | 0.200 | 1.00 | 2.00% | 60 s |"
    assert row in text
    assert "| finetune | 97.0% ± 0.5 | - | - | - | - | - | 80 s |" in text
    assert "| 64 px x 32 | 1 | piggyback | 10 | 200.0 ms | 1.25x | 1.0 MiB | 1.00x |" in text


def _multitask_speed(held: float, ops_mixed: int, modes: bool) -> dict:
    precision = {"fp32": 1.01, "bf16": 1.02, "bf16_vs_base_requires_grad": 1.03}
    speed = {
        "batch": 16,
        "switch_held_over_forward": held,
        "switch_packed_over_floor": 1.05,
        "mixed_over_one_task": 1.2,
        "precision": {"1": precision, "16": precision},
        "switching_s": {
            "plain_forward": 0.05,
            "unpack_and_multiply": 0.02,
            "set_adapter_held": 2e-4,
            "set_adapter_packed": 0.03,
        },
        "mixed_s": {"mixed_held": 1.2, "one_task": 1.0},
        "ops": {
            "masked_layers": 53,
            "plain_forward": 229,
            "switch_packed": 5,
            "switch_held": 0,
            "mixed_batch": ops_mixed,
            "one_task_batch": 229,
            "mixed_over_one_task": ops_mixed / 229,
        },
    }
    if modes:  # code with a choice of mixed-batch modes
        speed.update(mixed_fused_over_one_task=1.4, mixed_per_task_over_one_task=0.8)
        speed["ops"]["mixed_batch_per_task"] = 4 * 229
    return speed


def test_multitask_section_shows_before_and_after(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "DOCS_PAGE", tmp_path / "benchmarks.md")
    memory = [
        {"tasks": 1, "rss_increase_bytes": 2**20, "packed_mask_bytes": 2**19,
         "head_bytes": 1024, "materialised_bytes": 2**21, "base_weight_bytes": 2**22},
    ]  # fmt: skip
    for name, held, ops in (("multitask-cpu-before", 1.25, 2784), ("multitask-cpu", 1.01, 335)):
        payload = {
            "machine": MACHINE,
            "zero_fraction": 0.1,
            "repeats": 7,
            "large_repeats": 3,
            "load_average_start": [6.5, 6, 6],
            "load_average_end": [7.5, 7, 7],
            "models": {
                "resnet50": {"speed": _multitask_speed(held, ops, held < 1.1), "memory": memory}
            },
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    text = report.render().read_text()
    assert "| resnet50 | before | 1.25x | 1.05x | 1.20x | - / - |" in text
    assert "| resnet50 | after | 1.01x | 1.05x | 1.20x | 1.40x / 0.80x |" in text
    assert "| resnet50 | before | 53 | 229 | 5 | 0 | 2784 ÷ 229 = 12.16x | - |" in text
    assert "| resnet50 | after | 53 | 229 | 5 | 0 | 335 ÷ 229 = 1.46x | 916 |" in text
    assert "Load average (one minute) 6.5 at the start, 7.5 at the end" in text
    assert "| resnet50 | 1 | 1.0 MiB | 1.0 MiB | 0.5 MiB | 0.0 MiB | 2.0 MiB | 4.0 MiB |" in text


def test_recipes_section_lists_validation_and_test() -> None:
    data = {
        "machine": MACHINE,
        "budget": {"epochs": 3, "max_train": 800, "image_size": 48},
        "rows": [
            {"task": "mnist-5k", "method": "piggyback lr 3e-4", "seeds": 2,
             "test_accuracy": _spread(0.9), "validation_accuracy": _spread(0.91, 0.01),
             "train_seconds": _spread(30), "mask_zeros_fraction": _spread(0.01),
             "weights_bytes": _spread(70000)},
            {"task": "mnist-5k", "method": "packnet prune 0.5", "seeds": 1,
             "test_accuracy": _spread(0.8), "train_seconds": _spread(30),
             "pruned_fraction": _spread(0.5)},
        ],
    }  # fmt: skip
    text = "\n".join(report.recipes_section(data))
    assert (
        "| piggyback lr 3e-4 | mnist-5k | 2 | 91.0% ± 1.0 | 90.0% ± 0.0 | 1.00% | 70,000 |" in text
    )
    assert "| packnet prune 0.5 | mnist-5k | 1 | - | 80.0% ± 0.0 | 50.00% | - |" in text


def test_lora_demo_section_reports_the_run() -> None:
    data = {
        "machine": MACHINE,
        "budget": {"epochs": 5, "image_size": 64, "batch_size": 32, "seed": 0},
        "run": {"method": "lora r=4", "test_accuracy": 0.974, "validation_accuracy": 0.98,
                "best_epoch": 4, "weights_bytes": 424704},
    }  # fmt: skip
    text = "\n".join(report.lora_demo_section(data))
    assert "lora r=4 reached 97.4% test top-1 (best validation 98.0%, epoch 4)" in text
    assert "a 424,704-byte adapter" in text
