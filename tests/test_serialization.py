"""Bit packing, fingerprints, atomic writes and artifact validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pb_adapters import ArtifactError, FormatVersionError
from pb_adapters.serialization import (
    ARTIFACT_CONFIG_NAME,
    fingerprint_tensors,
    read_adapter_config,
)
from pb_adapters.utils.bits import count_zero_bits, pack_bits, unpack_bits
from pb_adapters.utils.files import atomic_write_bytes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=200))
def test_pack_unpack_round_trip_and_size(bits):
    tensor = torch.tensor(bits, dtype=torch.bool)
    packed = pack_bits(tensor)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(bits) / 8)
    assert torch.equal(unpack_bits(packed, len(bits)), tensor)
    assert count_zero_bits(packed, len(bits)) == len(bits) - sum(bits)


def test_packing_matches_numpy_packbits_layout():
    bits = torch.rand(3, 5, 7) > 0.5
    assert np.array_equal(pack_bits(bits).numpy(), np.packbits(bits.numpy().reshape(-1)))


def test_fingerprint_depends_on_values_names_and_dtype():
    a = torch.arange(6, dtype=torch.float32)
    base = fingerprint_tensors([("w", a)])
    assert base == fingerprint_tensors([("w", a.clone())])
    one_ulp = a.clone()
    one_ulp[5] = torch.nextafter(a[5], torch.tensor(10.0))
    assert base != fingerprint_tensors([("w", one_ulp)])
    assert base != fingerprint_tensors([("v", a)])
    assert base != fingerprint_tensors([("w", a.double())])
    assert base != fingerprint_tensors([("w", a.view(2, 3))])
    assert fingerprint_tensors([("w", a.bfloat16())]).startswith("sha256:")


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"first")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary file left


def _write_config(folder, data):
    (folder / ARTIFACT_CONFIG_NAME).write_text(json.dumps(data))


def test_read_adapter_config_validates_types(tmp_path):
    with pytest.raises(ArtifactError, match="pb-adapters artifact"):
        read_adapter_config(tmp_path)
    (tmp_path / ARTIFACT_CONFIG_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_adapter_config(tmp_path)
    _write_config(tmp_path, {"format_version": "1"})
    with pytest.raises(ArtifactError, match="format_version"):
        read_adapter_config(tmp_path)
    _write_config(tmp_path, {"format_version": 0})
    with pytest.raises(FormatVersionError, match="re-save"):
        read_adapter_config(tmp_path)
    good = {
        "format_version": 1,
        "method": "piggyback",
        "config": {"method": "piggyback"},
        "base_model": {"fingerprint": "sha256:00"},
        "modules": [
            {"name": "a", "type": "Conv2d", "shape": [2, 3], "numel": 6, "encoding": "bitpack"}
        ],
        "saved_modules": [],
        "head": {"paths": ["fc"]},
        "weights_sha256": "0" * 64,
    }
    _write_config(tmp_path, good)
    assert read_adapter_config(tmp_path)["method"] == "piggyback"
    for mutate, message in [
        (lambda d: d["modules"][0].update(numel=7), "numel"),
        (lambda d: d["modules"][0].update(shape=[-1, 3]), "shape"),
        (lambda d: d["modules"].append(dict(d["modules"][0])), "twice"),
        (lambda d: d["base_model"].update(fingerprint="md5:1"), "fingerprint"),
        (lambda d: d.update(datasets="mnist"), "datasets"),
        (lambda d: d["config"].update(method="ksm"), "config.method"),
    ]:
        data = json.loads(json.dumps(good))
        mutate(data)
        _write_config(tmp_path, data)
        with pytest.raises(ArtifactError, match=message):
            read_adapter_config(tmp_path)


def test_atomic_write_gives_normal_file_permissions(tmp_path):
    import os

    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"data")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
