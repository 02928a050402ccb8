"""Damaged safetensors files: errors name the tensor and come from the header, before reading."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from jaxquant.interop.safetensors_io import SafetensorsError, SafetensorsFile, write


def raw_file(path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_round_trip_with_storage_dtypes(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.int32).reshape(2, 3),
              "b": np.ones(5, ml_dtypes.bfloat16), "c": np.ones(4, ml_dtypes.float8_e4m3fn),
              "d": np.zeros((0, 3), np.float32)}
    write(tmp_path / "m.safetensors", arrays, {"format": "pt"})
    f = SafetensorsFile(tmp_path / "m.safetensors")
    assert f.metadata == {"format": "pt"}
    for k, v in arrays.items():
        got = f.read(k)
        assert got.dtype == v.dtype and got.shape == v.shape
        np.testing.assert_array_equal(got.view(np.uint8), v.view(np.uint8))


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8,
     "tensor 'w': ends at byte 16 of the data, which has 8; the file is truncated"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12,
     r"tensor 'w': F32\[4\] needs 16 bytes, the header gives it 12"),
    ({"w": {"dtype": "PICKLE", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4,
     "tensor 'w': unknown dtype 'PICKLE'"),
    ({"w": {"dtype": "U8", "shape": [-4], "data_offsets": [0, 4]}}, b"\0" * 4,
     r"tensor 'w': bad shape \[-4\]"),
    ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 0]}}, b"\0" * 4,
     "tensor 'w': bad data_offsets"),
    ({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
      "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 6,
     "tensors 'a' and 'b' overlap"),
    ({"w": [1, 2]}, b"", "tensor 'w': malformed header entry"),
])
def test_damaged_headers(tmp_path, header, data, message):
    raw_file(tmp_path / "m.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=message):
        SafetensorsFile(tmp_path / "m.safetensors")


def test_truncated_and_garbage_files(tmp_path):
    write(tmp_path / "m.safetensors", {"w": np.ones((64, 64), np.float32)})
    full = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(full[: len(full) // 2])
    with pytest.raises(SafetensorsError, match="tensor 'w': ends at byte 16384 .* truncated"):
        SafetensorsFile(tmp_path / "t.safetensors")
    (tmp_path / "h.safetensors").write_bytes(full[:40])
    with pytest.raises(SafetensorsError, match="header length .* does not fit the file"):
        SafetensorsFile(tmp_path / "h.safetensors")
    (tmp_path / "s.safetensors").write_bytes(b"\1\2")
    with pytest.raises(SafetensorsError, match="shorter than the 8-byte header length"):
        SafetensorsFile(tmp_path / "s.safetensors")
    (tmp_path / "j.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(SafetensorsError, match="corrupted header JSON"):
        SafetensorsFile(tmp_path / "j.safetensors")
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(SafetensorsError, match="header length 1152921504606846976 does not fit"):
        SafetensorsFile(tmp_path / "big.safetensors")
