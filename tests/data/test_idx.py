"""The IDX reader: round trips and every way a header or a length can be wrong."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from vitorch.data import read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path, suffix, dtype):
    values = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5)
    values = (values % 256).astype(dtype) if dtype == np.uint8 else values.astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, values)
    out = read_idx(path)
    assert out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out.numpy(), values)


def test_header_is_big_endian(tmp_path):
    # Written by hand, not by write_idx: magic 0x00000803, dims 2 x 1 x 3 in big-endian.
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 1, 3) + bytes(range(6)))
    assert read_idx(path).tolist() == [[[0, 1, 2]], [[3, 4, 5]]]
    assert read_idx(path).dtype == torch.uint8


def _raw(tmp_path, payload: bytes, name="bad.idx"):
    path = tmp_path / name
    path.write_bytes(payload)
    return path


GOOD = bytes([0, 0, 8, 2]) + struct.pack(">2I", 3, 4) + bytes(12)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00", "shorter than the 4-byte magic"),
        (bytes([1, 0, 8, 2]) + GOOD[4:], "magic number"),
        (bytes([0, 0, 7, 2]) + GOOD[4:], "magic number"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (GOOD[:9], "truncated IDX header"),
        (GOOD[:-1], "truncated"),
        (GOOD + b"\x00", "trailing bytes"),
    ],
    ids=["short", "magic", "type", "zero-dims", "header", "data-truncated", "data-trailing"],
)
def test_bad_files_name_the_file(tmp_path, payload, message):
    path = _raw(tmp_path, payload)
    with pytest.raises(ValueError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.idx.gz"
    write_idx(path, np.arange(4000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="cannot read") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_gzip_of_a_short_file(tmp_path):
    path = tmp_path / "short.idx.gz"
    with gzip.open(path, "wb") as f:
        f.write(GOOD[:-3])
    with pytest.raises(ValueError, match="truncated: header \\(3, 4\\)"):
        read_idx(path)


def test_expected_shape(tmp_path):
    path = _raw(tmp_path, GOOD)
    assert read_idx(path, expected_shape=(None, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match=r"dimensions \(3, 4\) do not match the expected \('\*', 5\)"):
        read_idx(path, expected_shape=(None, 5))
    with pytest.raises(ValueError, match="do not match"):
        read_idx(path, expected_shape=(3, 4, 1))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.idx")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="no IDX type code"):
        write_idx(tmp_path / "b.idx", np.zeros(3, dtype=np.complex64))
