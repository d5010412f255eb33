"""Classification metrics that add up correctly across processes.

:class:`ClassificationMetrics` keeps running sums (loss, top-k hits, sample count). Each update
works on one batch; with an ``accelerate.Accelerator`` the per-sample results are gathered with
``gather_for_metrics`` first, so every process ends with the totals over the whole dataset and the
samples a distributed sampler repeats to even out the last batch are counted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ClassificationMetrics", "topk_correct"]


def topk_correct(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> torch.Tensor:
    """Per-sample hits: a bool tensor ``[N, len(ks)]``, true where the target is in the top k.

    ``k`` larger than the number of classes counts every sample as a hit (all classes are in the
    "top k"). Ties are broken the way ``torch.topk`` breaks them.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # [N, kmax]
    hits = top == targets.view(-1, 1)
    # cumulative: a hit at rank r counts for every k > r
    cum = hits.cumsum(dim=1) > 0
    return torch.stack([cum[:, min(k, num_classes) - 1] for k in ks], dim=1)


class ClassificationMetrics:
    """Running top-k accuracy and mean cross-entropy over a data set.

    Example::

        metrics = ClassificationMetrics()
        for images, labels in loader:
            metrics.update(model(images), labels, accelerator=accelerator)
        metrics.compute()  # {"loss": ..., "top1": ..., "top5": ..., "num_samples": ...}
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.loss_sum = 0.0
        self.hits = [0] * len(self.ks)
        self.count = 0

    @torch.no_grad()
    def update(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        accelerator: Any = None,
        per_sample_loss: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            logits: ``[N, C]`` scores.
            targets: ``[N]`` class indices.
            accelerator: an ``accelerate.Accelerator``; when given, the per-sample results of all
                processes are gathered (``gather_for_metrics``) and added on every process.
            per_sample_loss: ``[N]`` losses if already computed; cross-entropy otherwise.
        """
        logits = logits.detach().float()
        targets = targets.detach().long()
        if per_sample_loss is None:
            per_sample_loss = F.cross_entropy(logits, targets, reduction="none")
        hits = topk_correct(logits, targets, self.ks).float()
        row = torch.cat([per_sample_loss.detach().float().view(-1, 1), hits], dim=1)  # [N, 1+K]
        if accelerator is not None:
            row = accelerator.gather_for_metrics(row)
        sums = row.sum(dim=0).cpu()
        self.loss_sum += float(sums[0])
        for i in range(len(self.ks)):
            self.hits[i] += round(float(sums[1 + i]))
        self.count += int(row.shape[0])

    def state_dict(self) -> dict[str, Any]:
        """The running sums as a JSON-ready dict (checkpoints of an unfinished epoch)."""
        return {"loss_sum": self.loss_sum, "hits": list(self.hits), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from sums saved by :meth:`state_dict`."""
        self.loss_sum = state["loss_sum"]
        self.hits = list(state["hits"])
        self.count = state["count"]

    def compute(self) -> dict[str, float]:
        """``{"loss", "top<k>" for each k, "num_samples"}``; accuracies are fractions in [0, 1]."""
        n = max(self.count, 1)
        out: dict[str, float] = {"loss": self.loss_sum / n}
        for k, h in zip(self.ks, self.hits, strict=True):
            out[f"top{k}"] = h / n
        out["num_samples"] = self.count
        return out
