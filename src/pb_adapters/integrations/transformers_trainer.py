"""``transformers.Trainer`` on a :class:`~pb_adapters.PiggybackModel`.

The stock Trainer trains the wrapper as it is: the wrapper's forward takes ``pixel_values`` and
``labels`` and returns the loss, and its ``state_dict`` saves and resumes exactly. What the stock
Trainer cannot know is that masks and head want different learning rates (piggyback: ``mask_lr``
and ``head_lr`` of the adapter config); :func:`create_optimizer` builds that optimiser, to pass as
``Trainer(..., optimizers=(optimizer, None))``, and :class:`PiggybackHFTrainer` builds it itself.
:func:`load_trainer_checkpoint` loads a Trainer checkpoint back into the wrapper, from which
``save_pretrained`` writes the task folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from ..errors import ArtifactError, ConfigError
from ..methods import get_method
from ..model import PiggybackModel

__all__ = ["PiggybackHFTrainer", "create_optimizer", "load_trainer_checkpoint"]

# Parameter groups that are ordinary weights, which TrainingArguments.weight_decay applies to.
# Mask scores (decay would pull them towards the threshold and flip entries), PackNet's free
# weights and norm parameters are never decayed, as in the methods' own training code.
_DECAYED_GROUPS = ("head", "modules")

# Optimiser kwargs with which TrainingArguments' optimiser builds its own parameter groups.
_OWN_GROUPS = ("params", "model", "optimizer_dict")


def _group_lr(model: PiggybackModel, group: str, overrides: Mapping[str, float]) -> float:
    if group in overrides:
        return float(overrides[group])
    config = model.peft_config[model.active_adapter]
    return float(getattr(config, get_method(config.method).lr_field(group)))


def create_optimizer(
    model: PiggybackModel,
    args: TrainingArguments | None = None,
    *,
    learning_rates: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """The optimiser for the active adapter, each parameter group at its method's learning rate.

    Groups are those of :meth:`~pb_adapters.PiggybackModel.parameter_groups` (``"masks"``,
    ``"head"``, ``"norms"``, ``"modules"``; PackNet: ``"weights"``); each takes its rate from
    the adapter config's field for it (piggyback: ``mask_lr``, ``head_lr``, ``norm_lr``), not
    from ``args.learning_rate``. Trainer's scheduler then scales every group alike.

    Args:
        model: The wrapper, with the adapter to train active.
        args: The ``TrainingArguments``: the optimiser class and its settings (``optim``, Adam
            betas and epsilon, ``weight_decay`` for the head) come from them. ``None``: Adam,
            as the methods' papers train.
        learning_rates: Rates that replace the config's, by group name
            (``{"masks": 5e-4}``).
    """
    if not isinstance(model, PiggybackModel) or model.active_adapter is None:
        raise ConfigError("create_optimizer needs a PiggybackModel with an active adapter")
    overrides = dict(learning_rates or {})
    groups = model.parameter_groups()
    unknown = sorted(set(overrides) - set(groups))
    if unknown:
        raise ConfigError(f"no parameter group {unknown} to train; the groups are {sorted(groups)}")
    if not groups:
        raise ConfigError(f"adapter {model.active_adapter!r} has no trainable parameters")
    decay = args.weight_decay if args is not None else 0.0
    param_groups = [
        {
            "name": name,
            "params": params,
            "lr": _group_lr(model, name, overrides),
            "weight_decay": decay if name in _DECAYED_GROUPS else 0.0,
        }
        for name, params in groups.items()
    ]
    if args is None:
        return torch.optim.Adam(param_groups)
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    if not isinstance(optimizer_cls, type) or any(k in kwargs for k in _OWN_GROUPS):
        raise ConfigError(
            f"optim={args.optim!r} builds its own parameter groups; use an optimiser such as "
            "adamw_torch or sgd with create_optimizer"
        )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("lr", "weight_decay")}
    return optimizer_cls(param_groups, **kwargs)


class PiggybackHFTrainer(Trainer):
    """``transformers.Trainer`` that builds its optimiser with :func:`create_optimizer`.

    Everything else is the stock Trainer; with a model other than a
    :class:`~pb_adapters.PiggybackModel` it behaves exactly like it.
    """

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The per-group optimiser for a PiggybackModel; Trainer's own for any other model."""
        target = self.model if model is None else model
        if self.optimizer is None and isinstance(target, PiggybackModel):
            self.optimizer = create_optimizer(target, self.args)
        if model is None:  # Trainer.create_optimizer takes a model from transformers 5.3 on
            return super().create_optimizer()
        return super().create_optimizer(model)


def load_trainer_checkpoint(
    model: PiggybackModel, checkpoint: str | os.PathLike[str]
) -> PiggybackModel:
    """Load a Trainer checkpoint folder (its ``model.safetensors``) into ``model``; return it.

    ``model`` must be built as the one that was trained (same base, same adapters). Every key
    and shape is checked before anything is loaded, so a refused checkpoint changes nothing.
    Then ``load_trainer_checkpoint(model, "out/checkpoint-500").save_pretrained("my-task")``
    writes the task folder.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file; pass a Trainer checkpoint folder")
    state = load_file(path)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{path} was saved from another model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; build the model (base and adapters) as it was trained"
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise ArtifactError(f"{path}: tensors of another shape than the model's: {wrong[:5]}")
    model.load_state_dict(state)
    return model
