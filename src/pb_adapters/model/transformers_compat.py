"""What transformers' own tools read off the wrapper: outputs with a loss, and the pipeline check.

``transformers.Trainer`` calls ``model(pixel_values=..., labels=...)`` and reads ``loss`` and
``logits`` from the output; timm models return bare logits and compute no loss, so the wrapper
builds the output transformers' image classifiers return, with the loss they would compute.
``pipeline("image-classification", model=...)`` checks the model's class name against a list of
known classifiers; :func:`register_pipeline_support` adds the wrapper's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["classification_loss", "classification_output", "register_pipeline_support"]

# Prefix of the keys the wrapper's class names are listed under in transformers'
# image-classification names. Never a transformers model type (those name a config class), so
# no lookup by config finds them.
_PIPELINE_KEY = "pb_adapters."


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The loss a transformers ``*ForImageClassification`` model computes for ``labels``.

    As transformers infers its ``problem_type``: one output is a regression (mean squared
    error), integer labels are single-label classes (cross entropy), anything else is
    multi-label targets (binary cross entropy with logits).
    """
    labels = labels.to(logits.device)
    num_labels = logits.shape[-1]
    if num_labels == 1:
        return F.mse_loss(logits.squeeze().float(), labels.squeeze().to(torch.float32))
    if labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
        return F.cross_entropy(logits.reshape(-1, num_labels).float(), labels.reshape(-1).long())
    return F.binary_cross_entropy_with_logits(logits.float(), labels.to(torch.float32))


def classification_output(logits: Any, labels: Tensor | None) -> Any:
    """``ImageClassifierOutput(loss, logits)`` for the logits a timm or torch model returned."""
    from transformers.modeling_outputs import ImageClassifierOutput  # local: costly import

    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the base model returned a {type(logits).__name__}, not a logits tensor; "
            "call it without labels= / pixel_values= to get its own output"
        )
    loss = classification_loss(logits, labels) if labels is not None else None
    return ImageClassifierOutput(loss=loss, logits=logits)


def register_pipeline_support(class_name: str) -> None:
    """List ``class_name`` among the models ``pipeline("image-classification")`` accepts.

    The pipeline otherwise logs that the model "is not supported" (and names every supported
    class) although it runs: it reads only ``config``, ``device`` and the forward's logits,
    which the wrapper passes through from a transformers base with the active task's labels.
    """
    from transformers.models.auto import modeling_auto  # local: only for transformers bases

    names = modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    names.setdefault(_PIPELINE_KEY + class_name, class_name)
