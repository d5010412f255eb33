"""Lossless entropy coding of packed bit planes (the masks of an artifact).

Learned masks are mostly ones: a plane with a fraction ``p`` of zeros carries ``H(p)`` bits of
information per bit (0.29 at ``p = 0.05``, 0.47 at ``p = 0.10``), well below the one bit that
plain packing spends. This module codes one packed plane (``uint8``, 8 bits per byte, most
significant bit first, as :func:`~pb_adapters.utils.bits.pack_bits` writes it) with an
asymmetric numeral systems (ANS) coder under an order-0 model, and decodes it back to the exact
same bytes.

The stream of one plane (encoding ``"ans"``) is:

* the number ``k`` of 1 bits among the plane's ``8 * size`` bits, as an unsigned LEB128 varint
  (1 to 5 bytes for planes below 4 GiB; the shortest form only);
* unless ``k`` is 0 or ``8 * size`` (then the plane is all zeros or all ones and nothing follows),
  the words of a ``constriction`` ``AnsCoder`` (32-bit words, little-endian) that code the plane's
  bytes as i.i.d. symbols whose probabilities are those of 8 independent bits with
  ``P(1) = k / (8 * size)``. Coding bytes under that product model costs exactly what coding the
  bits one by one would, with 8x fewer coder steps.

The model is a function of ``k`` and ``size`` alone, computed with IEEE float64 multiplications
in a fixed order, so every platform builds the same table. Decoding is bounded by the plane size
the reader expects (from the artifact's module shapes, checked against the model), and every
check a hostile stream could fail raises :class:`~pb_adapters.errors.ArtifactError`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import ArtifactError, ConfigError, FormatVersionError
from .utils.bits import BYTE_POPCOUNT, count_one_bits

__all__ = [
    "ANS_ENCODING",
    "DEFAULT_MASK_ENCODING",
    "MASK_ENCODINGS",
    "STREAM_HEADER_MAX_BYTES",
    "binary_entropy",
    "check_tensor_encodings",
    "decode_bit_plane",
    "decode_bit_planes",
    "encode_bit_plane",
    "encode_bit_planes",
    "order0_entropy_bits",
    "plane_entropy_bits",
]

#: The per-tensor encoding name of an entropy-coded plane (recorded in the artifact).
ANS_ENCODING = "ans"
#: What ``save_pretrained(mask_encoding=...)`` accepts: ``"ans"`` codes each bit plane when that is
#: smaller (format version 2), ``"bitpack"`` stores every plane packed (format version 1, which
#: older releases read).
MASK_ENCODINGS: tuple[str, ...] = (ANS_ENCODING, "bitpack")
DEFAULT_MASK_ENCODING = ANS_ENCODING
#: Bytes a coded stream spends beyond the plane's entropy, at most: the varint ``k`` (5 bytes for
#: planes below 4 GiB), the ANS coder's final state (8 bytes) and rounding to 32-bit words.
STREAM_HEADER_MAX_BYTES = 16

_POPCOUNT = BYTE_POPCOUNT.numpy()
_MAX_VARINT_BYTES = 10  # 64-bit counts; larger planes cannot exist


def binary_entropy(p: float) -> float:
    """``H(p)`` in bits: the information of one bit that is 1 (or 0) with probability ``p``."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def order0_entropy_bits(zeros: int, total: int) -> float:
    """Order-0 entropy of ``total`` binary entries, ``zeros`` of them 0: ``total * H(zeros/total)``.

    What an ideal coder that knows only the count spends on them (0 for no entries).
    """
    return total * binary_entropy(zeros / total) if total > 0 else 0.0


def plane_entropy_bits(packed: Tensor) -> float:
    """Order-0 entropy of a packed plane's ``8 * size`` bits: ``8 * size * H(ones / (8 * size))``."""
    return order0_entropy_bits(count_one_bits(packed), 8 * packed.numel())


# ---------------------------------------------------------------------------- the model
def _byte_model(ones: int, nbits: int):  # type: ignore[no-untyped-def]
    """The categorical model over bytes for planes with ``ones`` 1 bits out of ``nbits``."""
    import constriction  # local: only coding needs it

    p1 = ones / nbits
    p0 = (nbits - ones) / nbits
    # Powers by repeated multiplication in a fixed order: bit-identical on every platform
    # (pow() may differ in the last place between C libraries, which would change the table).
    pow1, pow0 = [1.0], [1.0]
    for _ in range(8):
        pow1.append(pow1[-1] * p1)
        pow0.append(pow0[-1] * p0)
    probabilities = np.array(pow1)[_POPCOUNT] * np.array(pow0)[8 - _POPCOUNT]
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(stream: bytes) -> tuple[int, int]:
    """``(value, bytes used)`` of the varint at the start of ``stream``; shortest form only."""
    value = 0
    for index in range(min(len(stream), _MAX_VARINT_BYTES)):
        byte = stream[index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if byte == 0 and index > 0:
                raise ArtifactError("coded mask stream: the bit count is not in its shortest form")
            return value, index + 1
    raise ArtifactError("coded mask stream: truncated or overlong bit count")


# ---------------------------------------------------------------------------- one plane
def encode_bit_plane(packed: Tensor) -> bytes | None:
    """The ``"ans"`` stream of a packed ``uint8`` plane, or ``None`` if it is not smaller.

    ``None`` means the caller should store the plane packed as it is (never larger than that).
    """
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(
            f"a bit plane is a 1-D uint8 tensor, got {packed.dtype} {list(packed.shape)}"
        )
    size = packed.numel()
    if not size:
        return None
    plane = packed.detach().cpu()
    data = plane.numpy()
    ones = count_one_bits(plane)
    nbits = 8 * size
    stream = _varint(ones)
    if 0 < ones < nbits:
        import constriction

        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(data.astype(np.int32), _byte_model(ones, nbits))
        stream += coder.get_compressed().astype("<u4").tobytes()
    return stream if len(stream) < size else None


def decode_bit_plane(stream: bytes | Tensor, size: int) -> Tensor:
    """Decode an ``"ans"`` stream to the packed ``uint8`` plane of ``size`` bytes it came from.

    Raises:
        ArtifactError: the stream is malformed, does not decode to exactly ``size`` bytes with
            the bit count it declares, or has bytes left over.
    """
    if isinstance(stream, Tensor):
        stream = stream.detach().cpu().numpy().tobytes()
    if not 0 < len(stream) < size:
        raise ArtifactError(
            f"coded mask stream of {len(stream)} bytes for a plane of {size} bytes: a coded plane "
            "is never empty nor larger than the packed one"
        )
    ones, used = _read_varint(stream)
    nbits = 8 * size
    body = stream[used:]
    if ones > nbits:
        raise ArtifactError(f"coded mask stream declares {ones} one bits in a {nbits}-bit plane")
    if ones in (0, nbits):
        if body:
            raise ArtifactError("coded mask stream: data follows a constant plane")
        return torch.full((size,), 0 if ones == 0 else 0xFF, dtype=torch.uint8)
    if not body or len(body) % 4:
        raise ArtifactError("coded mask stream: the coder words are missing or cut short")
    import constriction

    words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_byte_model(ones, nbits), size)
        exhausted = coder.is_empty()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # the Rust extension reports bad data (and panics) this way
        raise ArtifactError(f"coded mask stream cannot be decoded: {err}") from None
    if not exhausted:
        raise ArtifactError("coded mask stream: data is left over after the plane's last byte")
    data = symbols.astype(np.uint8)
    if count_one_bits(torch.from_numpy(data)) != ones:
        raise ArtifactError("coded mask stream: decoded bits do not match the declared count")
    return torch.from_numpy(data)


# ---------------------------------------------------------------------------- many planes
def encode_bit_planes(
    tensors: Mapping[str, Tensor], planes: Collection[str], mask_encoding: str
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Code the tensors named in ``planes`` where that is smaller; leave the others as they are.

    Returns the tensors to store and ``{key: encoding}`` of those coded (empty with
    ``mask_encoding="bitpack"``).
    """
    if mask_encoding not in MASK_ENCODINGS:
        raise ConfigError(
            f"mask_encoding must be one of {', '.join(MASK_ENCODINGS)}, got {mask_encoding!r}"
        )
    out = dict(tensors)
    encodings: dict[str, str] = {}
    if mask_encoding == ANS_ENCODING:
        for key in planes:
            stream = encode_bit_plane(out[key])
            if stream is not None:
                out[key] = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
                encodings[key] = ANS_ENCODING
    return out, encodings


def check_tensor_encodings(value: object, format_version: int) -> dict[str, str]:
    """Validate the ``tensor_encodings`` field of an artifact config; return it as a dict."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ArtifactError("'tensor_encodings' must map tensor names to encoding names")
    if value and format_version < 2:
        raise ArtifactError("'tensor_encodings' needs artifact format version 2 or later")
    unknown = sorted({v for v in value.values() if v != ANS_ENCODING})
    if unknown:
        raise FormatVersionError(
            f"the artifact uses tensor encodings {unknown} that this release cannot decode: "
            "upgrade pb-adapters (pip install -U pb-adapters)"
        )
    return dict(value)


def decode_bit_planes(
    tensors: dict[str, Tensor],
    encodings: Mapping[str, str],
    expected: Mapping[str, tuple[torch.dtype | None, tuple[int, ...]]],
) -> dict[str, Tensor]:
    """Replace each coded tensor of ``tensors`` by the packed plane of its ``expected`` shape."""
    out = dict(tensors)
    for key in encodings:
        dtype, shape = expected[key]
        try:
            out[key] = decode_bit_plane(out[key], shape[0]).to(dtype)
        except ArtifactError as err:
            raise ArtifactError(f"tensor {key!r}: {err}") from None
    return out
