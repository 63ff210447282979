"""A strict reader for the IDX format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header followed by raw values: two zero bytes, one
type byte (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C``
int32, ``0x0D`` float32, ``0x0E`` float64), one byte giving the number of
dimensions ``n``, then ``n`` big-endian uint32 sizes, then ``prod(sizes)`` values.
The reader checks every part of that and the exact length, so a truncated or
padded download raises instead of silently yielding a short data set.

References:
    LeCun, Cortes & Burges, The MNIST database (the IDX format description).
    Xiao, Rasul & Vollgraf, Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms (2017).
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_idx", "write_idx"]

# type byte -> numpy big-endian dtype
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {v.newbyteorder("="): k for k, v in _DTYPES.items()}

# No file here comes close: the largest (the training images) holds 47 MB.
_MAX_BYTES = 1 << 31


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(_MAX_BYTES + 1)
    except (OSError, EOFError) as err:  # gzip raises these on a cut or corrupt stream
        raise ValueError(f"{path}: cannot read the file ({type(err).__name__}: {err})") from None


def read_idx(path: str | os.PathLike, expected_shape: tuple[int | None, ...] | None = None) -> Tensor:
    """Read an IDX file (optionally gzipped, by the ``.gz`` suffix) into a tensor.

    Args:
        path: the file.
        expected_shape: sizes the file must have, ``None`` for a size left free,
            e.g. ``(None, 28, 28)`` for images; its length fixes the number of
            dimensions.

    Returns:
        A tensor of the stored sizes; unsigned bytes become ``torch.uint8``.

    Raises:
        ValueError: naming the file, if the magic number, type byte, dimensions or
            length are not what the header (or ``expected_shape``) says.
        FileNotFoundError: if the file does not exist.

    References:
        LeCun, Cortes & Burges, *The MNIST Database of Handwritten Digits* (1998), the IDX file format:
        http://yann.lecun.com/exdb/mnist/ (section "FILE FORMATS FOR THE MNIST DATABASE").
        Xiao, Rasul & Vollgraf, *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
        Algorithms* (arXiv:1708.07747, 2017): the same format.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    raw = _read_bytes(path)
    if len(raw) > _MAX_BYTES:
        raise ValueError(f"{path}: larger than {_MAX_BYTES} bytes; not an image data set this reader expects")
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: magic number {raw[:4].hex()} should be 0000 then a type byte in "
            f"{sorted(hex(c) for c in _DTYPES)} then the number of dimensions"
        )
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if expected_shape is not None:
        ok = len(expected_shape) == ndim and all(e is None or e == s for e, s in zip(expected_shape, shape))
        if not ok:
            want = tuple("*" if e is None else e for e in expected_shape)
            raise ValueError(f"{path}: IDX dimensions {shape} do not match the expected {want}")
    dtype = _DTYPES[code]
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have != need:
        what = "truncated" if have < need else "has trailing bytes"
        raise ValueError(f"{path}: IDX data {what}: header {shape} of {dtype.name} needs {need} bytes, found {have}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | os.PathLike, values: Tensor | np.ndarray) -> None:
    """Write ``values`` as an IDX file (gzipped if ``path`` ends in ``.gz``); the inverse of `read_idx`.

    Shapes: any ``values [d_1, ..., d_n]`` (``n <= 255``) is stored with its sizes in the header.

    References:
        LeCun, Cortes & Burges, *The MNIST Database of Handwritten Digits* (1998), the IDX file format:
        http://yann.lecun.com/exdb/mnist/ (section "FILE FORMATS FOR THE MNIST DATABASE").
        Xiao, Rasul & Vollgraf, *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
        Algorithms* (arXiv:1708.07747, 2017): the same format.
    """
    path = os.fspath(path)
    arr = np.asarray(values)
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"write_idx: dtype {arr.dtype} has no IDX type code; use one of {sorted(map(str, _CODES))}")
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"write_idx: values must have 1 to 255 dimensions; got {arr.ndim}")
    payload = struct.pack(f">HBB{arr.ndim}I", 0, code, arr.ndim, *arr.shape) + arr.astype(_DTYPES[code]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)
