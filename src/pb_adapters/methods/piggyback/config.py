"""Configuration of the piggyback method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...config import AdapterConfig
from ...errors import ConfigError

__all__ = ["PiggybackConfig"]


@dataclass
class PiggybackConfig(AdapterConfig):
    """Piggyback: learn a binary mask over the frozen weights of every targeted layer.

    Each masked weight gets a real-valued score; the layer computes with
    ``W * 1[score > threshold]`` and the score receives the gradient of the mask unchanged
    (straight-through). Defaults are those of the official piggyback code.

    Args:
        mask_init: Initial value of every score. Above ``threshold``, so training starts from
            an all-ones mask and the model equals the base model exactly (official: ``1e-2``).
        threshold: Scores above it keep their weight (official: ``5e-3``).
        mask_type: ``"binary"`` (mask in {0, 1}) or ``"ternary"`` (mask in {-1, 0, 1}: 1 where
            the score is above ``threshold``, -1 where it is below 0, else 0).
        mask_lr: Adam learning rate of the scores (official: ``1e-4``).
        head_lr: Adam learning rate of the task head (official: ``1e-4``).
        norm_lr: Learning rate of per-task norm layers when ``train_norms`` is set.

    The fields of :class:`~pb_adapters.config.AdapterConfig` (``target_modules``,
    ``num_labels``, ``id2label``, ``train_norms``...) apply as well.
    """

    method: ClassVar[str] = "piggyback"

    mask_init: float = 1e-2
    threshold: float = 5e-3
    mask_type: Literal["binary", "ternary"] = "binary"
    mask_lr: float = 1e-4
    head_lr: float = 1e-4
    norm_lr: float = 1e-4

    def validate(self) -> None:
        """Check the shared fields and the piggyback hyperparameters."""
        super().validate()
        for name in ("mask_init", "threshold"):
            self._check_float(name, getattr(self, name))
        for name in ("mask_lr", "head_lr", "norm_lr"):
            self._check_float(name, getattr(self, name), low=0.0)
        if self.mask_type not in ("binary", "ternary"):
            raise ConfigError(f"mask_type must be 'binary' or 'ternary', got {self.mask_type!r}")
        if self.threshold < 0:
            raise ConfigError(f"threshold must be >= 0, got {self.threshold!r}")
        if self.mask_init <= self.threshold:
            raise ConfigError(
                f"mask_init ({self.mask_init}) must be above threshold ({self.threshold}) so that "
                "training starts from the base model (an all-ones mask)"
            )
