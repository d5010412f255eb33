"""Top-k accuracy and loss accumulation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pb_adapters.training.metrics import ClassificationMetrics, topk_correct


def test_topk_correct_by_hand() -> None:
    logits = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.0, -1.0, -2.0],  # target 0: rank 1
            [0.9, 0.5, 0.1, 0.0, -1.0, -2.0],  # target 2: rank 3
            [0.9, 0.5, 0.1, 0.0, -1.0, -2.0],  # target 5: rank 6
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 1: rank 5
        ]
    )
    targets = torch.tensor([0, 2, 5, 1])
    hits = topk_correct(logits, targets, ks=(1, 3, 5))
    assert hits.tolist() == [
        [True, True, True],
        [False, True, True],
        [False, False, False],
        [False, False, True],
    ]


def test_k_larger_than_the_number_of_classes_counts_every_sample() -> None:
    logits = torch.randn(7, 3)
    targets = torch.randint(0, 3, (7,))
    hits = topk_correct(logits, targets, ks=(1, 5))
    assert hits[:, 1].all()
    assert hits[:, 0].tolist() == (logits.argmax(1) == targets).tolist()


def test_topk_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="batch, classes"):
        topk_correct(torch.randn(4), torch.zeros(4, dtype=torch.long))


def test_accumulation_over_batches_equals_the_whole() -> None:
    torch.manual_seed(0)
    logits = torch.randn(103, 10)
    targets = torch.randint(0, 10, (103,))
    metrics = ClassificationMetrics()
    for chunk in range(0, 103, 16):
        metrics.update(logits[chunk : chunk + 16], targets[chunk : chunk + 16])
    out = metrics.compute()
    assert out["num_samples"] == 103
    assert math.isclose(out["loss"], float(F.cross_entropy(logits, targets)), rel_tol=1e-5)
    assert out["top1"] == int((logits.argmax(1) == targets).sum()) / 103
    top5 = (logits.topk(5, 1).indices == targets[:, None]).any(1).sum()
    assert out["top5"] == int(top5) / 103
    metrics.reset()
    assert metrics.compute()["num_samples"] == 0


def test_accumulation_gathers_through_the_accelerator() -> None:
    class TwoProcesses:
        """Stands in for Accelerate: every process contributes the same batch."""

        def gather_for_metrics(self, tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor, tensor])

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    targets = torch.tensor([0, 0])
    metrics = ClassificationMetrics(ks=(1,))
    metrics.update(logits, targets, accelerator=TwoProcesses())
    out = metrics.compute()
    assert out["num_samples"] == 4 and out["top1"] == 0.5


def test_real_accelerator_single_process() -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    metrics = ClassificationMetrics()
    metrics.update(torch.eye(6), torch.arange(6), accelerator=acc)
    out = metrics.compute()
    assert (out["top1"], out["top5"], out["num_samples"]) == (1.0, 1.0, 6)
