"""Per-task classifier heads for timm and transformers models.

Each task owns its head: a fresh layer of the task's size built like the base head (same layer
type, input width, dtype and device), or a trainable copy of the base head when the task keeps
the base's classes. The base model's own head is never modified. The label metadata a model
carries (timm's ``num_classes``; transformers' ``num_labels``, ``config.id2label`` and
``config.label2id``) follows the active task, so ``ImageClassifierOutput`` and losses computed by
the model itself keep working.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import TargetingError
from .targeting import is_transformers_model

__all__ = ["LabelState", "copy_head", "create_task_head", "get_label_state", "set_label_state"]

# What to do instead when a head of that kind cannot be rebuilt for a new number of classes.
_KEEP_HEAD_HINT = (
    "leave num_labels unset so the task trains its own copy of the base head, or give the base "
    "a Linear head of the task's size first"
)


def _head_input_width(model: nn.Module, head: nn.Module) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    if isinstance(head, nn.Conv2d):
        return head.in_channels
    for attr in ("head_hidden_size", "num_features"):  # timm models built with num_classes=0
        width = getattr(model, attr, None)
        if isinstance(width, int) and width > 0:
            return width
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(hidden, int):
        return hidden
    raise TargetingError(
        f"cannot tell the input width of the classifier head {type(head).__name__}"
    )


def create_task_head(
    model: nn.Module, path: str, num_labels: int, *, device: torch.device | str | None = None
) -> nn.Module:
    """A fresh classifier of ``num_labels`` outputs shaped like the head at ``path``.

    Linear heads (and ``Identity`` heads of timm models created with ``num_classes=0``) get an
    ``nn.Linear``; 1x1 convolution heads get a 1x1 ``nn.Conv2d``. transformers heads are
    initialised as transformers does (normal, ``std=config.initializer_range``, zero bias);
    timm heads with PyTorch's default initialisation. The head is made on the model's device
    unless ``device`` says otherwise (``"meta"`` gives its shapes without allocating it).
    """
    old = model.get_submodule(path)
    width = _head_input_width(model, old)
    reference = next(iter(model.parameters()), None)
    factory: dict[str, Any] = {}
    if reference is not None:
        factory = {"device": reference.device, "dtype": reference.dtype}
    if device is not None:
        factory["device"] = device
    if isinstance(old, nn.Conv2d):
        if old.kernel_size != (1, 1):
            raise TargetingError(
                f"classifier {path!r} is a {old.kernel_size} convolution; a new head can replace a "
                f"1x1 one only: {_KEEP_HEAD_HINT}"
            )
        head: nn.Module = nn.Conv2d(width, num_labels, 1, bias=old.bias is not None, **factory)
    elif isinstance(old, nn.Linear | nn.Identity):
        bias = old.bias is not None if isinstance(old, nn.Linear) else True
        head = nn.Linear(width, num_labels, bias=bias, **factory)
    else:
        raise TargetingError(
            f"classifier {path!r} is a {type(old).__name__}; a new head can replace a Linear, a 1x1 "
            f"Conv2d or an Identity: {_KEEP_HEAD_HINT}"
        )
    if is_transformers_model(model):
        std = float(getattr(model.config, "initializer_range", 0.02))
        with torch.no_grad():
            nn.init.normal_(head.weight, mean=0.0, std=std)
            if head.bias is not None:
                head.bias.zero_()
    return head


def copy_head(model: nn.Module, path: str) -> nn.Module:
    """A trainable copy of the base model's head at ``path``."""
    head = copy.deepcopy(model.get_submodule(path))
    for param in head.parameters():
        param.requires_grad_(True)
    return head


@dataclass
class LabelState:
    """The label metadata a model carries about its current head."""

    num_labels: int | None
    id2label: dict[int, str] | None
    label2id: dict[str, int] | None


def get_label_state(model: nn.Module) -> LabelState:
    """Read ``model``'s label metadata (what :func:`set_label_state` restores)."""
    if is_transformers_model(model):
        config = model.config
        return LabelState(
            getattr(model, "num_labels", config.num_labels),
            dict(config.id2label),
            dict(config.label2id),
        )
    return LabelState(getattr(model, "num_classes", None), None, None)


def set_label_state(model: nn.Module, state: LabelState) -> None:
    """Make ``model``'s label metadata describe the head of ``state``."""
    if state.num_labels is None:
        return
    if is_transformers_model(model):
        id2label = state.id2label or {i: f"LABEL_{i}" for i in range(state.num_labels)}
        label2id = state.label2id or {name: i for i, name in id2label.items()}
        model.config.id2label = dict(id2label)
        model.config.label2id = dict(label2id)
        model.num_labels = state.num_labels
    elif hasattr(model, "num_classes"):
        model.num_classes = state.num_labels
