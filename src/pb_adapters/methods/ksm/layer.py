"""The KSM masked layer: ``W * (binary + real)``, one mask entry per kernel.

A mask entry ``r`` covers one kernel (``[C_out, C_in / groups]`` entries for a convolution,
broadcast over the spatial kernel) or, where a kernel is a single weight (``Linear``, 1x1
convolutions), a block of ``block_size`` consecutive input connections of one output.
"""

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
from ..base import AdapterLayer, ScoredMaskLayer, WeightWriter
from .config import KSMConfig

__all__ = [
    "KSMLayer",
    "dequantize_scales",
    "entry_repeats",
    "expand_mask",
    "mask_shape",
    "quantize_scales",
    "relaxed_binary",
]

#: Levels of the quantised real part (8 bits per mask entry).
_LEVELS = 255


def mask_shape(weight_shape: tuple[int, ...], block_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of the mask for a weight of ``weight_shape``.

    Convolutions with kernels of more than one weight get one entry per kernel,
    ``(C_out, C_in / groups)``; layers whose kernel is one weight (``Linear``, 1x1 convolutions)
    get ``(out, ceil(in / block_size))``.
    """
    rows = weight_shape[0]
    fan_in = weight_shape[1] if len(weight_shape) > 1 else 1
    if math.prod(weight_shape[2:]) > 1:
        return rows, fan_in
    return rows, -(-fan_in // block_size)


def expand_mask(mask: Tensor, weight_shape: tuple[int, ...], block_size: int) -> Tensor:
    """``mask`` (``rows x cols``) laid out to multiply a weight of ``weight_shape``.

    Kernel entries are viewed as ``[C_out, C_in / groups, 1, 1]`` and broadcast over the kernel;
    block entries are repeated ``block_size`` times along the input axis.
    """
    rows, fan_in = weight_shape[0], (weight_shape[1] if len(weight_shape) > 1 else 1)
    spatial = weight_shape[2:]
    if math.prod(spatial) > 1:
        return mask.view(rows, fan_in, *([1] * len(spatial)))
    cols = mask.shape[1]
    if block_size > 1:
        mask = mask.unsqueeze(-1).expand(rows, cols, block_size).reshape(rows, cols * block_size)
        mask = mask[:, :fan_in]
    return mask.reshape(weight_shape)


def entry_repeats(weight_shape: tuple[int, ...], block_size: int) -> Tensor:
    """How many consecutive weights (in C order) each mask entry covers, as :func:`expand_mask`
    lays it out: the kernel size, or ``block_size`` (less for the last block of a row)."""
    rows, cols = mask_shape(weight_shape, block_size)
    spatial = math.prod(weight_shape[2:])
    if spatial > 1:
        return torch.full((rows * cols,), spatial, dtype=torch.int32)
    fan_in = weight_shape[1] if len(weight_shape) > 1 else 1
    row = torch.full((cols,), block_size, dtype=torch.int32)
    row[-1] = fan_in - (cols - 1) * block_size
    return row.repeat(rows)


def relaxed_binary(real_mask: Tensor, temperature: float) -> Tensor:
    """The two-state softmax relaxation of the binary part, differentiable in ``real_mask``.

    With ``p = sigmoid(r)`` (the logistic function), the softmax at ``temperature`` of the two
    states ``(log p, log(1 - p))`` gives the "on" state the probability
    ``sigmoid((log p - log(1 - p)) / temperature) = sigmoid(r / temperature)``, computed in that
    closed form (numerically stable for any ``r``).
    """
    return torch.sigmoid(real_mask / temperature)


def quantize_scales(real_part: Tensor) -> tuple[Tensor, Tensor]:
    """8-bit codes and the per-layer ``[offset, step]`` (float32) of a real part tensor.

    ``offset`` is the minimum and ``step = (max - min) / 255``; a constant tensor gets step 0
    and codes 0, so it is reproduced exactly (the all-zero start state in particular).
    """
    values = real_part.detach().to(torch.float32)
    if values.numel() == 0:
        return values.to(torch.uint8), values.new_zeros(2)
    low, high = values.min(), values.max()
    step = (high - low) / _LEVELS
    if float(step) > 0:
        codes = torch.round((values - low) / step).clamp_(0, _LEVELS).to(torch.uint8)
    else:
        codes, step = torch.zeros_like(values, dtype=torch.uint8), torch.zeros_like(step)
    return codes, torch.stack([low, step])


def dequantize_scales(codes: Tensor, scale_range: Tensor) -> Tensor:
    """Inverse of :func:`quantize_scales`: ``offset + code * step`` in float32."""
    return scale_range[0] + codes.to(torch.float32) * scale_range[1]


class KSMLayer(ScoredMaskLayer):
    """A Conv/Linear layer whose weight each adapter scales kernel by kernel.

    A trainable adapter holds one real-valued entry per kernel (``mask_scores[name]``, float32
    whatever the base dtype). In training the layer computes with the relaxed mask
    ``sigmoid(r / T) + s * (r - r0)``; in eval mode, in ``merge_and_unload`` and in the artifact
    with the hardened one, ``1[r > 0] + quantised(s * (r - r0))``. A loaded, frozen adapter holds
    only the packed binary plane and the 8-bit real part (9 bits per mask entry).
    """

    encoding = "ksm-bitpack+u8"
    bit_plane_keys = ("mask",)

    packed_stores = ("packed_masks", "scale_codes", "scale_ranges")
    # name -> (mask_init, temperature, real_scale, block_size)
    adapter_settings: dict[str, tuple[float, float, float, int]]

    @staticmethod
    def _settings(config: KSMConfig) -> tuple[float, float, float, int]:
        return (
            float(config.mask_init),
            float(config.temperature),
            float(config.real_scale),
            int(config.block_size),
        )

    @property
    def _weight_shape(self) -> tuple[int, ...]:
        return tuple(self.base_layer.weight.shape)

    def _mask_shape(self, name: str) -> tuple[int, int]:
        return mask_shape(self._weight_shape, self.adapter_settings[name][3])

    def add_adapter(self, name: str, config: KSMConfig) -> None:
        """Start adapter ``name`` with every entry at ``config.mask_init`` (the base model)."""
        weight = self.base_layer.weight
        self.delete_adapter(name)
        self.adapter_settings[name] = self._settings(config)
        entries = torch.full(
            self._mask_shape(name),
            float(config.mask_init),
            dtype=torch.float32,
            device=weight.device,
        )
        self.mask_scores[name] = nn.Parameter(entries)

    def state_tensors(self, name: str) -> list[Tensor]:
        """The entries, or the packed planes, that adapter ``name``'s mask is computed from."""
        if name in self.mask_scores:
            return [self.mask_scores[name]]
        return [self.packed_masks[name], self.scale_codes[name], self.scale_ranges[name]]

    # -- the mask ---------------------------------------------------------------------------
    def _real_part(self, name: str) -> Tensor:
        init, _, real_scale, _ = self.adapter_settings[name]
        return real_scale * (self.mask_scores[name] - init)

    def soft_mask(self, name: str) -> Tensor:
        """The training mask (``rows x cols``, float32): relaxed binary part plus real part."""
        _, temperature, _, _ = self.adapter_settings[name]
        return relaxed_binary(self.mask_scores[name], temperature) + self._real_part(name)

    def hard_parts(self, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(binary, codes, scale_range)``: the hardened mask as the artifact stores it.

        ``binary`` is a bool tensor ``rows x cols`` (1 where ``r > 0``), ``codes`` the 8-bit
        real part and ``scale_range`` its ``[offset, step]``.
        """
        rows, cols = self._mask_shape(name)
        if name in self.mask_scores:
            with torch.no_grad():
                binary = self.mask_scores[name] > 0
                codes, scale_range = quantize_scales(self._real_part(name))
            return binary, codes, scale_range
        binary = unpack_bits(self.packed_masks[name], rows * cols).view(rows, cols)
        return binary, self.scale_codes[name], self.scale_ranges[name]

    def hard_mask(self, name: str) -> Tensor:
        """The eval / export mask (``rows x cols``, float32): ``binary + dequantised real``."""
        binary, codes, scale_range = self.hard_parts(name)
        return binary.to(torch.float32) + dequantize_scales(codes, scale_range)

    def _apply_mask(self, name: str, mask: Tensor) -> Tensor:
        weight = self.base_layer.weight
        block_size = self.adapter_settings[name][3]
        return weight * expand_mask(mask.to(weight.dtype), self._weight_shape, block_size)

    def effective_weight(self, name: str) -> Tensor:
        """The relaxed weight while training (differentiable in the entries), else the hard one."""
        if self.training and name in self.mask_scores:
            return self._apply_mask(name, self.soft_mask(name))
        return self.inference_weight(name)

    def inference_weight(self, name: str) -> Tensor:
        """``W * (1[r > 0] + quantised real part)``: exactly what the artifact reproduces."""
        return self._apply_mask(name, self.hard_mask(name))

    @classmethod
    def inference_writer(
        cls, layers: Sequence[AdapterLayer], name: str, shared: dict[Any, Any]
    ) -> WeightWriter:
        """All layers' hard weights at once: every layer's entries joined, dequantised with
        per-entry copies of the layers' ranges, spread over the weights by one
        ``repeat_interleave`` and multiplied by one multi-tensor product. Bit for bit
        :meth:`inference_weight`."""
        ready = cls.batchable_on_base(layers, name, shared, setting=3)  # the block size
        if ready is None:
            return super().inference_writer(layers, name, shared)
        block, bases = ready
        ksm: list[KSMLayer] = list(layers)  # type: ignore[arg-type]
        device, dtype = bases[0].device, bases[0].dtype
        entries = [math.prod(layer._mask_shape(name)) for layer in ksm]
        key = ("ksm-layout", block, device, tuple(id(layer) for layer in ksm))
        if key not in shared:  # per-entry layout, the same for every adapter of these layers
            repeats = torch.cat([entry_repeats(layer._weight_shape, block) for layer in ksm])
            shared[key] = (repeats.to(device), torch.tensor(entries, device=device))
        repeats, counts = shared[key]
        planes = [layer.packed_masks[name] for layer in ksm]
        codes = [layer.scale_codes[name].view(-1) for layer in ksm]
        ranges = [layer.scale_ranges[name] for layer in ksm]
        padded = any(n % 8 for n in entries)
        pieces = [size for n in entries for size in (n, -n % 8)]
        numels = [base.numel() for base in bases]
        total_entries, total = sum(entries), sum(numels)

        def write(targets: Sequence[Tensor], joined: Tensor | None) -> None:
            with torch.no_grad():
                binary = unpack_bits_padded(torch.cat(planes), torch.float32)
                if padded:
                    binary = torch.cat(binary.split(pieces)[::2])
                offset, step = (
                    torch.stack(ranges)
                    .repeat_interleave(counts, dim=0, output_size=total_entries)
                    .unbind(1)
                )
                real = offset + torch.cat(codes).to(torch.float32) * step
                mask = (binary + real).to(dtype)
                full = mask.repeat_interleave(repeats, output_size=total)
                chunks = list(full.split(numels))
                torch._foreach_mul_(chunks, bases)
                if joined is not None:
                    joined.copy_(full)
                else:
                    torch._foreach_copy_(list(targets), chunks)

        return write

    def mask_counts(self, name: str) -> tuple[int, int]:
        """``(entries whose binary part is 0, mask entries)`` of adapter ``name``."""
        rows, cols = self._mask_shape(name)
        if name in self.mask_scores:
            with torch.no_grad():
                return int((self.mask_scores[name] <= 0).sum()), rows * cols
        return count_zero_bits(self.packed_masks[name], rows * cols), rows * cols

    # -- artifact ---------------------------------------------------------------------------
    def export_adapter(self, name: str) -> dict[str, Tensor]:
        """``mask`` (packed binary plane), ``scale`` (8-bit real part), ``scale_range``."""
        if name in self.mask_scores:
            binary, codes, scale_range = self.hard_parts(name)
            return {"mask": pack_bits(binary), "scale": codes, "scale_range": scale_range}
        return {
            "mask": self.packed_masks[name],
            "scale": self.scale_codes[name],
            "scale_range": self.scale_ranges[name],
        }

    @classmethod
    def encoding_for(cls, config: KSMConfig) -> str:
        """``"ksm-bitpack+u8"``: 1 bit plus 8 bits per mask entry, and 2 floats per layer."""
        return cls.encoding

    @classmethod
    def expected_tensors(
        cls, shape: tuple[int, ...], config: KSMConfig
    ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Keys, dtypes and shapes :meth:`export_adapter` produces for a weight of ``shape``."""
        rows, cols = mask_shape(shape, int(config.block_size))
        return {
            "mask": (torch.uint8, (packed_size(rows * cols),)),
            "scale": (torch.uint8, (rows, cols)),
            "scale_range": (torch.float32, (2,)),
        }

    @classmethod
    def check_import(
        cls, shape: tuple[int, ...], tensors: dict[str, Tensor], config: KSMConfig
    ) -> None:
        """Refuse tensors that do not fit a weight of ``shape``; changes nothing."""
        expected = cls.expected_tensors(shape, config)
        cls._check_layout(tensors, expected)
        rows, cols = mask_shape(shape, int(config.block_size))
        cls._require(
            padding_bits_clear(tensors["mask"], rows * cols), "tensor 'mask' has padding bits set"
        )
        offset, step = (float(v) for v in tensors["scale_range"])
        cls._require(
            math.isfinite(offset) and math.isfinite(step) and step >= 0,
            f"tensor 'scale_range' must hold a finite offset and step >= 0, got {[offset, step]}",
        )
        top = dequantize_scales(torch.tensor([_LEVELS], dtype=torch.uint8), tensors["scale_range"])
        cls._require(bool(torch.isfinite(top).all()), "tensor 'scale_range' overflows float32")

    def import_adapter(
        self, name: str, tensors: dict[str, Tensor], config: KSMConfig, trainable: bool
    ) -> None:
        """Install a saved mask, packed (frozen) or as entries that reproduce it (trainable).

        Trainable entries are ``r0 + real / real_scale``, moved across 0 where needed to keep
        each binary bit; training resumes from the dequantised real part (its quantisation error,
        at most half a step, cannot be recovered).
        """
        self.delete_adapter(name)
        device = self.base_layer.weight.device
        self.adapter_settings[name] = self._settings(config)
        self.packed_masks[name] = tensors["mask"].to(device).clone()
        self.scale_codes[name] = tensors["scale"].to(device).clone()
        self.scale_ranges[name] = tensors["scale_range"].to(device).clone()
        if not trainable:
            return
        binary, codes, scale_range = self.hard_parts(name)
        init, _, real_scale, _ = self.adapter_settings[name]
        if real_scale > 0:
            entries = init + dequantize_scales(codes, scale_range) / real_scale
            tiny = torch.finfo(torch.float32).tiny
            entries = torch.where(binary, entries.clamp(min=tiny), entries.clamp(max=0.0))
        else:  # no real part: only the binary bit matters
            entries = torch.where(binary, init, -init)
        for store in (self.packed_masks, self.scale_codes, self.scale_ranges):
            del store[name]
        self.mask_scores[name] = nn.Parameter(entries.to(torch.float32))
