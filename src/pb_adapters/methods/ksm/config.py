"""Configuration of the KSM (kernel-wise soft mask) method."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ...config import AdapterConfig
from ...errors import ConfigError

__all__ = ["KSMConfig"]


@dataclass
class KSMConfig(AdapterConfig):
    """KSM: learn one soft mask value per convolution kernel of every targeted layer.

    Each mask entry ``r`` (one per kernel: ``[C_out, C_in / groups]`` for a convolution) gives a
    binary part and a real part; the layer computes with ``W * (binary + real)``, the entry
    broadcast over its kernel. In training the binary part is relaxed (a logistic function and a
    two-state softmax at ``temperature``, no straight-through estimator); in eval mode and in the
    artifact it is exactly 0 or 1 and the real part is quantised to 8 bits. See the method's docs
    page for the equations.

    Args:
        mask_init: Initial value of every entry; above 0, so the binary part starts at 1, and
            the real part ``real_scale * (r - mask_init)`` starts at 0: the model starts as the
            base model.
        temperature: Temperature of the two-state softmax. The relaxed binary part is
            ``sigmoid(r / temperature)``; small values keep it close to the hard 0/1 used in eval.
        real_scale: Factor of the real part, ``real_scale * (r - mask_init)``; 0 leaves only the
            binary part. 10 turns Adam's steps on ``r`` (about ``mask_lr`` each) into 10x larger
            steps of the kernel's scale (chosen on the demo's validation split over 1 and 10).
        block_size: Where a kernel is a single weight (``Linear`` layers and 1x1 convolutions),
            how many consecutive input connections of one output share a mask entry. 9 gives
            these layers the cost of a 3x3 convolution, about 1 bit per weight.
        mask_lr: Adam learning rate of the mask entries. ``1e-3``, chosen on validation over
            ``1e-4`` (the demo at 5 epochs: 97.9% test top-1 against 95.7%; see the method's
            docs page).
        head_lr: Adam learning rate of the task head.
        norm_lr: Learning rate of per-task norm layers when ``train_norms`` is set.

    The fields of :class:`~pb_adapters.config.AdapterConfig` (``target_modules``,
    ``num_labels``, ``id2label``, ``train_norms``...) apply as well.
    """

    method: ClassVar[str] = "ksm"

    mask_init: float = 1e-2
    temperature: float = 1e-3
    real_scale: float = 10.0
    block_size: int = 9
    mask_lr: float = 1e-3
    head_lr: float = 1e-4
    norm_lr: float = 1e-4

    def validate(self) -> None:
        """Check the shared fields and the KSM hyperparameters."""
        super().validate()
        self._check_float("mask_init", self.mask_init)
        self._check_float("real_scale", self.real_scale, low=0.0)
        self._check_float("temperature", self.temperature)
        for name in ("mask_lr", "head_lr", "norm_lr"):
            self._check_float(name, getattr(self, name), low=0.0)
        for name in ("mask_init", "temperature", "real_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.mask_init <= 0:
            raise ConfigError(
                f"mask_init must be > 0 so that training starts from the base model (a binary part "
                f"of ones), got {self.mask_init!r}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if (
            isinstance(self.block_size, bool)
            or not isinstance(self.block_size, int)
            or self.block_size < 1
        ):
            raise ConfigError(f"block_size must be a positive integer, got {self.block_size!r}")
