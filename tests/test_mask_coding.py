"""Entropy coding of packed bit planes: round trips, size bounds, fallback and hostile streams."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from pb_adapters import (
    ArtifactError,
    FormatVersionError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.mask_coding import (
    STREAM_HEADER_MAX_BYTES,
    binary_entropy,
    check_tensor_encodings,
    decode_bit_plane,
    encode_bit_plane,
    encode_bit_planes,
    plane_entropy_bits,
)
from pb_adapters.methods.base import AdapterLayer
from pb_adapters.serialization import (
    ARTIFACT_CONFIG_NAME,
    ARTIFACT_WEIGHTS_NAME,
    read_adapter_config,
)
from pb_adapters.utils.bits import pack_bits
from tests.factories import tiny_timm


def _plane(numel: int, zero_fraction: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pack_bits(torch.rand(numel, generator=generator) >= zero_fraction)


@settings(max_examples=150, deadline=None)
@given(
    numel=st.sampled_from([0, 1, 7, 8, 9, 15, 17]) | st.integers(0, 6000),
    zero_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_is_exact_and_never_larger(numel, zero_fraction, seed):
    packed = _plane(numel, zero_fraction, seed)
    stream = encode_bit_plane(packed)
    if stream is None:
        return  # stored packed: nothing to decode
    assert 0 < len(stream) < packed.numel()
    decoded = decode_bit_plane(stream, packed.numel())
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, packed)
    # Within 5% of the plane's order-0 entropy plus the small per-plane header.
    assert len(stream) <= 1.05 * plane_entropy_bits(packed) / 8 + STREAM_HEADER_MAX_BYTES


@pytest.mark.parametrize("zero_fraction", [0.005, 0.05, 0.10, 0.30])
def test_realistic_layers_come_within_half_a_percent_of_entropy(zero_fraction):
    packed = _plane(409_600, zero_fraction)  # lite0's largest layer (1280 x 320)
    stream = encode_bit_plane(packed)
    entropy_bytes = plane_entropy_bits(packed) / 8
    assert stream is not None
    assert len(stream) <= 1.005 * entropy_bytes + STREAM_HEADER_MAX_BYTES
    assert torch.equal(decode_bit_plane(stream, packed.numel()), packed)


def test_constant_planes_cost_only_their_count():
    ones = torch.full((1000,), 0xFF, dtype=torch.uint8)
    zeros = torch.zeros(1000, dtype=torch.uint8)
    assert encode_bit_plane(ones) == bytes([0xC0, 0x3E])  # varint 8000
    assert encode_bit_plane(zeros) == b"\x00"
    assert torch.equal(decode_bit_plane(b"\xc0\x3e", 1000), ones)
    assert torch.equal(decode_bit_plane(b"\x00", 1000), zeros)


def test_incompressible_planes_fall_back_to_packing():
    assert encode_bit_plane(_plane(80_000, 0.5)) is None  # a fair coin: 1 bit per bit
    assert encode_bit_plane(torch.zeros(0, dtype=torch.uint8)) is None
    tensors = {"a": _plane(8000, 0.5), "b": _plane(8000, 0.02), "head": torch.ones(3)}
    stored, encodings = encode_bit_planes(tensors, ["a", "b"], "ans")
    assert encodings == {"b": "ans"}
    assert stored["a"] is tensors["a"] and stored["head"] is tensors["head"]
    assert stored["b"].numel() < 1000 // 4
    assert encode_bit_planes(tensors, ["a", "b"], "bitpack") == (tensors, {})
    with pytest.raises(ValueError, match="mask_encoding"):
        encode_bit_planes(tensors, ["a"], "zip")


# The stream of an 800-bit plane with ~10% zeros (numpy's generator, seed 123), as written by the
# first release with entropy coding. Later releases must decode it and write it byte for byte.
GOLDEN_STREAM = bytes.fromhex(
    "d50535bcb3d436c15bc1f35bb01c27bd8dda3c8ebb59551eda6333f603e4e68d54f092b6d83259ee57b3530e2a1e3e963300"
)


def test_the_stream_format_is_stable():
    rng = np.random.default_rng(123)
    plane = torch.from_numpy(np.packbits(rng.random(800) >= 0.1))
    assert torch.equal(decode_bit_plane(GOLDEN_STREAM, 100), plane)
    assert encode_bit_plane(plane) == GOLDEN_STREAM


def test_entropy_helpers():
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == 1.0
    assert round(binary_entropy(0.05), 2) == 0.29 and round(binary_entropy(0.10), 2) == 0.47
    plane = pack_bits(torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool))
    assert plane_entropy_bits(plane) == pytest.approx(8 * binary_entropy(1 / 8))


# ---------------------------------------------------------------------------- hostile input
def _valid_stream() -> tuple[bytes, int]:
    plane = _plane(8000, 0.1, seed=7)
    stream = encode_bit_plane(plane)
    assert stream is not None
    return stream, plane.numel()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: b"", "never empty"),
        (lambda s: s + bytes(1000), "larger than"),
        (lambda s: b"\x80\x00" + s[2:], "shortest form"),
        (lambda s: b"\xff" * 11, "overlong"),
        (lambda s: b"\xff\xff\xff\x7f", "one bits"),  # count > bits in the plane
        (lambda s: b"\x00\x00\x00\x00\x00", "constant plane"),
        (lambda s: s[:-1], "cut short"),
        (lambda s: s[:3], "cut short"),
        (lambda s: s[:-4] + b"\x00\x00\x00\x00", "cannot be decoded"),
        (lambda s: s + b"\x01\x00\x00\x00", "left over|do not match"),
        (lambda s: s[:-4], "left over|do not match|cannot"),
    ],
)
def test_malformed_streams_raise_artifact_error(mutate, message):
    stream, size = _valid_stream()
    with pytest.raises(ArtifactError, match=message):
        decode_bit_plane(mutate(stream), size)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=200), size=st.integers(1, 400))
def test_random_streams_never_crash(data, size):
    try:
        decoded = decode_bit_plane(data, size)
    except ArtifactError:
        return
    # Garbage that happens to be a valid stream decodes to a plane of the expected size only.
    assert decoded.dtype == torch.uint8 and decoded.shape == (size,)


@settings(max_examples=100, deadline=None)
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_flipped_bytes_are_caught_or_decode_to_the_right_size(position, value):
    stream, size = _valid_stream()
    corrupt = bytearray(stream)
    corrupt[position % len(corrupt)] = value
    try:
        decoded = decode_bit_plane(bytes(corrupt), size)
    except ArtifactError:
        return
    assert decoded.shape == (size,)


def test_tensor_encodings_field_is_validated():
    assert check_tensor_encodings(None, 1) == {}
    assert check_tensor_encodings({"layers.a.mask": "ans"}, 2) == {"layers.a.mask": "ans"}
    with pytest.raises(ArtifactError, match="must map"):
        check_tensor_encodings(["layers.a.mask"], 2)
    with pytest.raises(ArtifactError, match="version 2"):
        check_tensor_encodings({"layers.a.mask": "ans"}, 1)
    with pytest.raises(FormatVersionError, match="upgrade pb-adapters"):
        check_tensor_encodings({"layers.a.mask": "ans-v9"}, 2)


def test_header_allowance_is_what_the_docs_say():
    # 5-byte count (planes below 4 GiB), 8-byte final coder state, up to 3 bytes of rounding.
    assert STREAM_HEADER_MAX_BYTES == 5 + 8 + 3
    assert math.isclose(binary_entropy(0.3), 0.8813, abs_tol=1e-4)


# ---------------------------------------------------------------------------- in artifacts
def _model(mask_type: str = "binary", zero_fraction: float = 0.1):
    model = get_piggyback_model(
        tiny_timm("test_resnet"), PiggybackConfig(num_labels=3, mask_type=mask_type)
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            scores = layer.mask_scores["default"]
            draw = torch.rand(scores.shape, generator=generator)
            # 1e-2 keeps, 1e-3 (under the threshold) drops, -1e-2 is -1 when ternary.
            values = torch.where(draw < zero_fraction, 1e-3, 1e-2)
            scores.copy_(torch.where(draw > 0.97, -1e-2, values))
    return model.eval()


def _rewrite(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Change the stored tensors and config with ``edit``; keep the pair consistent (hash)."""
    path = folder / ARTIFACT_WEIGHTS_NAME
    tensors = load_file(path)
    config = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())
    edit(tensors, config)
    save_file(tensors, path)
    config["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / ARTIFACT_CONFIG_NAME).write_text(json.dumps(config))


@pytest.mark.parametrize("mask_type", ["binary", "ternary"])
def test_coded_artifacts_reload_bit_exactly(tmp_path, mask_type):
    model = _model(mask_type)
    model.save_pretrained(tmp_path, write_card=False)
    config = read_adapter_config(tmp_path)
    planes = {"mask", "sign"} if mask_type == "ternary" else {"mask"}
    assert {key.rsplit(".", 1)[1] for key in config["tensor_encodings"]} == planes
    reloaded = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)
    for (_, ours), (_, theirs) in zip(
        model.adapter_layers(), reloaded.adapter_layers(), strict=True
    ):
        assert ours.export_adapter("default").keys() == theirs.export_adapter("default").keys()
        for key, packed in ours.export_adapter("default").items():
            assert torch.equal(theirs.export_adapter("default")[key], packed)


def test_untrained_masks_cost_a_few_bytes_per_layer(tmp_path):
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=3))
    model.save_pretrained(tmp_path, write_card=False)
    stored = load_file(tmp_path / ARTIFACT_WEIGHTS_NAME)
    masks = {k: v for k, v in stored.items() if k.startswith("layers.")}
    coded = read_adapter_config(tmp_path)["tensor_encodings"]
    # Every plane that packs to more than a few bytes is all ones: its bit count alone.
    assert all(masks[k].numel() <= 3 for k in coded)
    assert all(v.numel() <= 4 for k, v in masks.items() if k not in coded)
    reloaded = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)
    assert reloaded.mask_stats().zeros == 0


def _first_coded(config: dict) -> str:
    return next(iter(config["tensor_encodings"]))


def test_tampered_streams_are_refused_and_the_model_is_unchanged(tmp_path):
    _model().save_pretrained(tmp_path, write_card=False)

    def corrupt(tensors, config):
        key = _first_coded(config)
        stream = tensors[key].clone()
        stream[len(stream) // 2] ^= 0x5A
        tensors[key] = stream

    _rewrite(tmp_path, corrupt)
    base = tiny_timm("test_resnet")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ArtifactError, match="coded mask stream"):
        PiggybackModel.from_pretrained(base, tmp_path)
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (  # longer than the packed plane: the writer would have stored that instead
            lambda t, c: t.__setitem__(_first_coded(c), torch.ones(10**6, dtype=torch.uint8)),
            ArtifactError,
            "shorter than",
        ),
        (  # a head weight declared coded
            lambda t, c: c["tensor_encodings"].__setitem__(
                next(k for k in t if k.startswith("modules.")), "ans"
            ),
            ArtifactError,
            "not a packed bit plane",
        ),
        (
            lambda t, c: c["tensor_encodings"].__setitem__("layers.nowhere.mask", "ans"),
            ArtifactError,
            "not a packed bit plane",
        ),
        (
            lambda t, c: c["tensor_encodings"].__setitem__(_first_coded(c), "ans-v9"),
            FormatVersionError,
            "upgrade pb-adapters",
        ),
        (lambda t, c: c.__setitem__("format_version", 1), ArtifactError, "version 2"),
        (lambda t, c: c.__setitem__("tensor_encodings", {}), ArtifactError, "shape"),
    ],
)
def test_inconsistent_coding_records_are_refused(tmp_path, edit, error, message):
    _model().save_pretrained(tmp_path, write_card=False)
    _rewrite(tmp_path, edit)
    with pytest.raises(error, match=message):
        PiggybackModel.from_pretrained(tiny_timm("test_resnet"), tmp_path)
