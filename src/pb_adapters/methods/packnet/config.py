"""Configuration of the PackNet method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import AdapterConfig
from ...errors import ConfigError

__all__ = ["PackNetConfig"]


@dataclass
class PackNetConfig(AdapterConfig):
    """PackNet: each task trains the weights no earlier task kept, then prunes them by magnitude.

    All tasks of a model share one packed copy of every targeted weight plus an owner index
    (``0``: free, ``k``: kept by task ``k``). Task ``k`` computes with the weights owned by tasks
    ``1..k``; everything else is zero for it. Training task ``k`` updates only the free weights,
    so earlier tasks never change. Defaults are those of the official PackNet code.

    Args:
        prune_ratio: Fraction of the task's trained weights pruned (per layer, smallest ``|w|``
            first) and released for later tasks (official: ``0.75``).
        weight_lr: SGD learning rate of the free weights while training (official: ``1e-3``).
        head_lr: SGD learning rate of the task head (official: the same ``1e-3``).
        norm_lr: Learning rate of per-task norm layers when ``train_norms`` is set.
        finetune_lr: Learning rate of the weights and head while retraining after pruning
            (official: ``1e-4``).
        momentum: SGD momentum (official: ``0.9``).
        weight_decay: SGD weight decay (official: ``0``).
        epochs: Training epochs before pruning (official: ``20``).
        lr_decay_every: Epochs between x0.1 learning-rate decays (official: ``10``).
        finetune_epochs: Retraining epochs after pruning (official: ``10``).
        task_index: The task's slot ``k`` in the packed network (1 for the first task). Filled in
            when the adapter is added; recorded in artifacts.
        pruned_fraction: The pruning history of this task: per targeted layer, the fraction of
            the weights it trained that pruning released (``None`` while not pruned; an
            unpruned last task keeps every weight it trained).

    The fields of :class:`~pb_adapters.config.AdapterConfig` apply as well; ``train_norms``
    gives each task its own norm layers (otherwise every task uses the base's, frozen).
    """

    method: ClassVar[str] = "packnet"

    prune_ratio: float = 0.75
    weight_lr: float = 1e-3
    head_lr: float = 1e-3
    norm_lr: float = 1e-3
    finetune_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 20
    lr_decay_every: int = 10
    finetune_epochs: int = 10
    task_index: int | None = None
    pruned_fraction: dict[str, float] | None = None

    def validate(self) -> None:
        """Check the shared fields and the PackNet hyperparameters."""
        super().validate()
        self._check_float("prune_ratio", self.prune_ratio, low=0.0, high=1.0)
        self._check_float("momentum", self.momentum, low=0.0, high=1.0)
        for name in ("weight_lr", "head_lr", "norm_lr", "finetune_lr", "weight_decay"):
            self._check_float(name, getattr(self, name), low=0.0)
        for name in ("epochs", "lr_decay_every", "finetune_epochs", "task_index"):
            value = getattr(self, name)
            if value is None and name == "task_index":
                continue
            low = 0 if name == "finetune_epochs" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.task_index is not None and self.task_index > 255:
            raise ConfigError("a packed network holds at most 255 tasks")
        history = self.pruned_fraction
        if history is not None and not (
            isinstance(history, dict)
            and all(
                isinstance(k, str)
                and isinstance(v, int | float)
                and not isinstance(v, bool)
                and 0.0 <= v <= 1.0
                for k, v in history.items()
            )
        ):
            raise ConfigError("pruned_fraction must map layer names to fractions in [0, 1]")
