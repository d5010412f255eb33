"""The toy layer: each adapter switches whole output channels of the weight on or off."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pb_adapters.methods.base import ScoredMaskLayer
from pb_adapters.utils.bits import count_zero_bits, pack_bits, packed_size, unpack_bits

from .config import ChannelMaskConfig

__all__ = ["ChannelMaskLayer"]


class ChannelMaskLayer(ScoredMaskLayer):
    """A Conv/Linear layer whose output channels each adapter keeps or zeroes.

    A trainable adapter holds one float32 score per output channel (``mask_scores[name]``); a
    loaded, frozen one only its packed bits (``packed_masks[name]``, 1 bit per channel).
    """

    encoding = "channel-bitpack"
    bit_plane_keys = ("mask",)
    packed_stores = ("packed_masks",)

    @property
    def _channels(self) -> int:
        return self.base_layer.weight.shape[0]

    def add_adapter(self, name: str, config: ChannelMaskConfig) -> None:
        """Start adapter ``name`` with every channel on (scores at ``config.score_init``)."""
        weight = self.base_layer.weight
        self.delete_adapter(name)
        self.adapter_settings[name] = ()
        scores = torch.full((self._channels,), float(config.score_init), device=weight.device)
        self.mask_scores[name] = nn.Parameter(scores)

    def state_tensors(self, name: str) -> list[Tensor]:
        """The scores, or the packed bits, of adapter ``name``."""
        store = self.mask_scores if name in self.mask_scores else self.packed_masks
        return [store[name]]

    def channel_mask(self, name: str) -> Tensor:
        """Adapter ``name``'s mask, one float32 0/1 per output channel."""
        if name in self.mask_scores:
            scores = self.mask_scores[name]
            # Straight-through: the value is exactly the hard mask (s - s is exactly 0), the
            # gradient reaches the scores unchanged.
            return (scores - scores.detach()) + (scores > 0).to(scores.dtype)
        return unpack_bits(self.packed_masks[name], self._channels, torch.float32)

    def effective_weight(self, name: str) -> Tensor:
        """The base weight with the switched-off output channels zeroed."""
        weight = self.base_layer.weight
        mask = self.channel_mask(name).to(weight.dtype)
        return weight * mask.view(-1, *([1] * (weight.dim() - 1)))

    def mask_counts(self, name: str) -> tuple[int, int]:
        """``(channels switched off, channels)``."""
        if name in self.mask_scores:
            return int((self.mask_scores[name] <= 0).sum()), self._channels
        return count_zero_bits(self.packed_masks[name], self._channels), self._channels

    # -- artifact ---------------------------------------------------------------------------
    def export_adapter(self, name: str) -> dict[str, Tensor]:
        """``{"mask": packed channel bits}``."""
        if name in self.mask_scores:
            return {"mask": pack_bits(self.mask_scores[name].detach() > 0)}
        return {"mask": self.packed_masks[name]}

    @classmethod
    def encoding_for(cls, config: ChannelMaskConfig) -> str:
        """``"channel-bitpack"``: 1 bit per output channel."""
        return cls.encoding

    @classmethod
    def expected_tensors(
        cls, shape: tuple[int, ...], config: ChannelMaskConfig
    ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """One packed bit per output channel of a weight of ``shape``."""
        return {"mask": (torch.uint8, (packed_size(shape[0]),))}

    @classmethod
    def check_import(
        cls, shape: tuple[int, ...], tensors: dict[str, Tensor], config: ChannelMaskConfig
    ) -> None:
        """Refuse tensors that do not fit a weight of ``shape``; changes nothing."""
        cls._check_layout(tensors, cls.expected_tensors(shape, config))
        if shape[0] % 8:
            pad_mask = (1 << (8 - shape[0] % 8)) - 1
            cls._require(
                int(tensors["mask"][-1]) & pad_mask == 0, "tensor 'mask' has padding bits set"
            )

    def import_adapter(
        self, name: str, tensors: dict[str, Tensor], config: ChannelMaskConfig, trainable: bool
    ) -> None:
        """Install saved bits, packed (frozen) or as scores that reproduce them (trainable)."""
        self.delete_adapter(name)
        self.adapter_settings[name] = ()
        self.packed_masks[name] = tensors["mask"].to(self.base_layer.weight.device).clone()
        if trainable:
            init = float(config.score_init)
            scores = torch.where(self.channel_mask(name) > 0, init, -init)
            del self.packed_masks[name]
            self.mask_scores[name] = nn.Parameter(scores.to(torch.float32))
