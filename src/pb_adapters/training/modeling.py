"""The model side of training: what is under the wrappers, how to call it, baseline heads.

The trainer and the data pipeline see models through Accelerate's DistributedDataParallel,
``torch.compile`` and :class:`~pb_adapters.PiggybackModel`; :func:`inner_model` finds the timm /
transformers model under them without importing the wrapper (the data pipeline sits beside it,
not above it).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pb_adapters.heads import LabelState, create_task_head, set_label_state
from pb_adapters.targeting import find_head_paths, model_family

__all__ = [
    "forward_logits",
    "head_modules",
    "inner_model",
    "prepare_baseline_model",
    "set_head_only_train_mode",
    "uses_pixel_values",
]

# Class names of the data-parallel wrappers whose ``module`` is the model they run.
_PARALLEL_WRAPPERS = ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel")


def _is_adapter_wrapper(model: nn.Module) -> bool:
    # PiggybackModel registers its base as the submodule ``base_model`` and keeps one config per
    # task in ``peft_config``. transformers models expose ``base_model`` as a property that is
    # not a registered submodule, so they do not match.
    return isinstance(model._modules.get("base_model"), nn.Module) and isinstance(
        getattr(model, "peft_config", None), dict
    )


def inner_model(model: nn.Module) -> nn.Module:
    """The timm / transformers model under DDP, ``torch.compile`` and adapter wrappers."""
    for _ in range(8):
        if _is_adapter_wrapper(model):
            model = model._modules["base_model"]
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__name__ in _PARALLEL_WRAPPERS:
            model = model.module
        else:
            break
    return model


def uses_pixel_values(model: nn.Module) -> bool:
    """Whether ``model`` (under any wrapper) is a transformers model, called with ``pixel_values=``."""
    return model_family(inner_model(model)) == "transformers"


def forward_logits(model: nn.Module, images: torch.Tensor, transformers_api: bool) -> torch.Tensor:
    """Class scores of ``model`` for ``images``: ``model(x)`` for timm/torch models,
    ``model(pixel_values=x).logits`` for transformers models."""
    out = model(pixel_values=images) if transformers_api else model(images)
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):  # e.g. distilled timm models in train mode
        logits = logits[0]
    return logits


def head_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the classifier layer(s) of a plain timm / transformers model."""
    paths = find_head_paths(model)
    if not paths:
        raise ValueError(
            f"cannot find the classifier head of {type(model).__name__}; baselines need a timm "
            "model (pretrained_cfg['classifier']) or a transformers *ForImageClassification model"
        )
    return [(p, model.get_submodule(p)) for p in paths]


def prepare_baseline_model(
    model: nn.Module, num_labels: int, id2label: dict[int, str] | None = None
) -> nn.Module:
    """Give a plain timm / transformers model a fresh head of ``num_labels`` classes, in place.

    Used for the ``finetune`` and ``head`` baselines. The label metadata (timm ``num_classes``,
    transformers ``num_labels``/``id2label``/``label2id``) is updated to match.
    """
    for path, _ in head_modules(model):
        model.set_submodule(path, create_task_head(model, path, num_labels))
    id2label = dict(id2label) if id2label else {i: str(i) for i in range(num_labels)}
    set_label_state(model, LabelState(num_labels, id2label, {v: k for k, v in id2label.items()}))
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": num_labels}
    return model


def set_head_only_train_mode(model: nn.Module, head_names: Iterable[str]) -> None:
    """Everything in eval mode (frozen norms, no dropout/drop-path in the frozen backbone) except
    the head modules."""
    model.eval()
    model.training = True  # timm applies head dropout depending on the model's own flag
    for name in head_names:
        model.get_submodule(name).train()
