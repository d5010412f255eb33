"""The piggyback masked layer: ``W * mask``, with mask = 1[score > threshold]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...utils.bits import (
    count_zero_bits,
    pack_bits,
    packed_size,
    padding_bits_clear,
    unpack_bits,
    unpack_bits_padded,
)
from ..base import AdapterLayer, ScoredMaskLayer, WeightWriter, staging_dtype
from .config import PiggybackConfig

__all__ = ["PiggybackLayer", "binarize"]


class _StraightThroughMask(torch.autograd.Function):
    """Hard threshold forward, identity backward (the official piggyback binarizer)."""

    @staticmethod
    def forward(ctx: object, scores: Tensor, threshold: float, ternary: bool) -> Tensor:
        mask = (scores > threshold).to(scores.dtype)
        if ternary:
            mask = mask - (scores < 0).to(scores.dtype)
        return mask

    @staticmethod
    def backward(ctx: object, grad_output: Tensor) -> tuple[Tensor, None, None]:
        return grad_output, None, None


def binarize(scores: Tensor, threshold: float, ternary: bool = False) -> Tensor:
    """The hard mask of ``scores`` with a straight-through gradient.

    Binary: 1 where ``score > threshold``, else 0. Ternary: 1 where ``score > threshold``, -1
    where ``score < 0``, else 0. The gradient with respect to ``scores`` is the incoming gradient,
    unchanged.
    """
    return _StraightThroughMask.apply(scores, threshold, ternary)


class PiggybackLayer(ScoredMaskLayer):
    """A Conv/Linear layer whose weight each adapter masks elementwise.

    A trainable adapter holds one real-valued score per weight (``mask_scores[name]``, float32
    whatever the base dtype). A loaded, frozen adapter holds only its packed mask
    (``packed_masks[name]``: 1 bit per weight, plus a packed sign plane when ternary), so inactive
    tasks cost 1 bit (binary) or 2 bits (ternary) per masked weight in memory.
    """

    encoding = "bitpack"
    bit_plane_keys = ("mask", "sign")

    packed_stores = ("packed_masks", "packed_signs")
    adapter_settings: dict[str, tuple[float, bool]]  # name -> (threshold, ternary)

    def _settings(self, config: PiggybackConfig) -> tuple[float, bool]:
        return float(config.threshold), config.mask_type == "ternary"

    def add_adapter(self, name: str, config: PiggybackConfig) -> None:
        """Start adapter ``name`` from scores of ``config.mask_init`` (an all-ones mask)."""
        weight = self.base_layer.weight
        scores = torch.full(
            weight.shape, float(config.mask_init), dtype=torch.float32, device=weight.device
        )
        self.delete_adapter(name)
        self.mask_scores[name] = nn.Parameter(scores)
        self.adapter_settings[name] = self._settings(config)

    def state_tensors(self, name: str) -> list[Tensor]:
        """The scores, or the packed planes, that adapter ``name``'s mask is computed from."""
        if name in self.mask_scores:
            return [self.mask_scores[name]]
        return [self.packed_masks[name]] + (
            [self.packed_signs[name]] if name in self.packed_signs else []
        )

    # -- the mask ---------------------------------------------------------------------------
    def mask(self, name: str) -> Tensor:
        """Adapter ``name``'s mask as a float32 tensor of the weight's shape ({0,1} or {-1,0,1})."""
        threshold, ternary = self.adapter_settings[name]
        if name in self.mask_scores:
            return binarize(self.mask_scores[name], threshold, ternary)
        shape = self.base_layer.weight.shape
        numel = self.base_layer.weight.numel()
        mask = unpack_bits(self.packed_masks[name], numel, torch.float32)
        if ternary:
            mask = mask - 2 * unpack_bits(self.packed_signs[name], numel, torch.float32)
        return mask.view(shape)

    def effective_weight(self, name: str) -> Tensor:
        """``W * mask``; differentiable with respect to the scores when the adapter trains."""
        weight = self.base_layer.weight
        if name in self.mask_scores:
            return weight * self.mask(name).to(weight.dtype)
        # A frozen mask is a fresh tensor: multiply in place to save one weight-sized buffer.
        return self.mask(name).to(weight.dtype).mul_(weight)

    @classmethod
    def inference_writer(
        cls, layers: Sequence[AdapterLayer], name: str, shared: dict[Any, Any]
    ) -> WeightWriter:
        """All layers' ``W * mask`` at once: the packed planes joined, unpacked by one table
        lookup (straight into the bank when it is one contiguous buffer) and multiplied by one
        multi-tensor product. Bit for bit what :meth:`effective_weight` gives."""
        ready = cls.batchable_on_base(layers, name, shared, setting=1)  # ternary or not
        if ready is None:
            return super().inference_writer(layers, name, shared)
        ternary, bases = ready
        planes = [layer.packed_masks[name] for layer in layers]
        signs = [layer.packed_signs[name] for layer in layers] if ternary else []
        numels = [base.numel() for base in bases]
        aligned = all(n % 8 == 0 for n in numels)  # no padding bits between layers
        pieces = [size for n in numels for size in (n, -n % 8)]  # each layer, then its padding
        staging = staging_dtype(
            bases[0].device, bases[0].dtype, torch.int8 if ternary else torch.uint8
        )

        def write(targets: Sequence[Tensor], joined: Tensor | None) -> None:
            with torch.no_grad():
                direct = aligned and joined is not None
                packed = torch.cat(planes)
                mask = unpack_bits_padded(packed, staging, out=joined if direct else None)
                if ternary:
                    mask.sub_(unpack_bits_padded(torch.cat(signs), mask.dtype), alpha=2)
                if not direct:
                    torch._foreach_copy_(list(targets), list(mask.split(pieces)[::2]))
                torch._foreach_mul_(list(targets), bases)

        return write

    def mask_counts(self, name: str) -> tuple[int, int]:
        """``(zeros, weights)`` of adapter ``name``'s mask."""
        numel = self.base_layer.weight.numel()
        if name in self.mask_scores:
            with torch.no_grad():
                zeros = int((self.mask(name) == 0).sum())
            return zeros, numel
        return count_zero_bits(self.packed_masks[name], numel), numel

    # -- artifact ---------------------------------------------------------------------------
    def export_adapter(self, name: str) -> dict[str, Tensor]:
        """``{"mask": packed nonzero bits}`` (+ ``"sign"``: packed negative bits when ternary)."""
        if name not in self.mask_scores:
            out = {"mask": self.packed_masks[name]}
            if name in self.packed_signs:
                out["sign"] = self.packed_signs[name]
            return out
        with torch.no_grad():
            mask = self.mask(name)
        out = {"mask": pack_bits(mask != 0)}
        if self.adapter_settings[name][1]:
            out["sign"] = pack_bits(mask < 0)
        return out

    @classmethod
    def encoding_for(cls, config: PiggybackConfig) -> str:
        """``"bitpack"`` (1 bit per weight) or ``"bitpack+sign"`` (ternary: 2 bits per weight)."""
        return "bitpack+sign" if config.mask_type == "ternary" else "bitpack"

    @classmethod
    def expected_tensors(
        cls, shape: tuple[int, ...], config: PiggybackConfig
    ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Keys, dtypes and shapes :meth:`export_adapter` produces for a weight of ``shape``."""
        size = (packed_size(math.prod(shape)),)
        expected = {"mask": (torch.uint8, size)}
        if config.mask_type == "ternary":
            expected["sign"] = (torch.uint8, size)
        return expected

    @classmethod
    def check_import(
        cls, shape: tuple[int, ...], tensors: dict[str, Tensor], config: PiggybackConfig
    ) -> None:
        """Refuse tensors that do not fit a weight of ``shape``; changes nothing."""
        expected = cls.expected_tensors(shape, config)
        cls._check_layout(tensors, expected)
        numel = math.prod(shape)
        for key in expected:
            cls._require(
                padding_bits_clear(tensors[key], numel), f"tensor {key!r} has padding bits set"
            )
        if "sign" in tensors:
            # A weight cannot be both zero and negative: sign bits must be a subset of mask bits.
            cls._require(
                bool(((tensors["sign"] & ~tensors["mask"]) == 0).all()),
                "ternary sign bits are set where the mask is zero",
            )

    def import_adapter(
        self, name: str, tensors: dict[str, Tensor], config: PiggybackConfig, trainable: bool
    ) -> None:
        """Install a saved mask, packed (frozen) or as scores that reproduce it (trainable)."""
        self.delete_adapter(name)
        device = self.base_layer.weight.device
        self.adapter_settings[name] = self._settings(config)
        self.packed_masks[name] = tensors["mask"].to(device).clone()
        if "sign" in tensors:
            self.packed_signs[name] = tensors["sign"].to(device).clone()
        if trainable:
            mask = self.mask(name)
            init, threshold = float(config.mask_init), float(config.threshold)
            # Scores that reproduce the mask exactly: +init for 1, -init for -1, between 0 and
            # the threshold for 0.
            scores = torch.where(mask > 0, init, torch.where(mask < 0, -init, threshold / 2))
            del self.packed_masks[name]
            if name in self.packed_signs:
                del self.packed_signs[name]
            self.mask_scores[name] = nn.Parameter(scores.to(torch.float32))
