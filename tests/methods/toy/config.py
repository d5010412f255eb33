"""Configuration of the toy method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pb_adapters.config import AdapterConfig
from pb_adapters.errors import ConfigError

__all__ = ["ChannelMaskConfig"]


@dataclass
class ChannelMaskConfig(AdapterConfig):
    """Toy method: learn one on/off bit per output channel of every targeted layer.

    Each output channel gets a real-valued score; the layer computes with its weight rows
    multiplied by ``1[score > 0]`` (straight-through gradient).

    Args:
        score_init: Initial value of every score; above 0, so training starts from the base.
        mask_lr: Learning rate of the scores.
        head_lr: Learning rate of the task head.
        norm_lr: Learning rate of per-task norm layers when ``train_norms`` is set.
    """

    method: ClassVar[str] = "toy"

    score_init: float = 1e-2
    mask_lr: float = 1e-4
    head_lr: float = 1e-4
    norm_lr: float = 1e-4

    def validate(self) -> None:
        """Check the shared fields and the toy's hyperparameters."""
        super().validate()
        self._check_float("score_init", self.score_init)
        for name in ("mask_lr", "head_lr", "norm_lr"):
            self._check_float(name, getattr(self, name), low=0.0)
        if self.score_init <= 0:
            raise ConfigError(
                f"score_init must be > 0 (start from the base), got {self.score_init}"
            )
