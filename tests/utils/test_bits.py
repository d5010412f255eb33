"""Bit counting and padding checks of ``pb_adapters.utils.bits`` (packing itself: test_serialization)."""

from __future__ import annotations

import pytest
import torch

from pb_adapters.utils import bits
from pb_adapters.utils.bits import (
    BYTE_POPCOUNT,
    count_one_bits,
    count_zero_bits,
    pack_bits,
    pack_uints,
    padding_bits_clear,
)


def _ones_by_hand(packed: torch.Tensor) -> int:
    return sum(bin(int(b)).count("1") for b in packed.tolist())


def test_byte_popcount_table() -> None:
    assert BYTE_POPCOUNT.tolist() == [bin(i).count("1") for i in range(256)]


@pytest.mark.parametrize("numpy_popcount", [True, False])
def test_count_one_bits_matches_counting_by_hand(
    numpy_popcount: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not numpy_popcount:  # the table lookup that other devices (and numpy < 2) use
        monkeypatch.delattr(bits.np, "bitwise_count", raising=False)
    packed = torch.randint(0, 256, (1001,), dtype=torch.uint8)
    assert count_one_bits(packed) == _ones_by_hand(packed)
    assert count_one_bits(packed[::3]) == _ones_by_hand(packed[::3])  # a strided view
    assert count_one_bits(torch.empty(0, dtype=torch.uint8)) == 0
    flags = torch.rand(77) < 0.3
    assert count_zero_bits(pack_bits(flags), 77) == int((~flags).sum())


def test_padding_bits_clear() -> None:
    assert padding_bits_clear(pack_bits(torch.ones(13, dtype=torch.bool)), 13)
    assert padding_bits_clear(pack_bits(torch.ones(16, dtype=torch.bool)), 16)  # no padding
    assert padding_bits_clear(pack_uints(torch.tensor([3, 1, 2]), 3), 9)
    dirty = pack_bits(torch.ones(13, dtype=torch.bool))
    dirty[-1] |= 0b00000100  # the third of the three padding bits
    assert not padding_bits_clear(dirty, 13)
    assert padding_bits_clear(dirty, 14)  # that bit is data when 14 bits are stored
    with pytest.raises(ValueError, match="cannot hold exactly"):
        padding_bits_clear(dirty, 17)
    with pytest.raises(ValueError, match="cannot hold exactly"):
        padding_bits_clear(dirty, 8)
