"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the array data in C order and big-endian byte order.
MNIST images are ``0x00000803`` (uint8, 3-D), labels ``0x00000801`` (uint8, 1-D).

The reader is strict: the data length must match the header exactly, because a short or
padded file means a broken download, and training on it silently would be worse than failing.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type codes and the big-endian numpy dtype each one stores.
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in DTYPES.items()}


class IdxError(ValueError):
    """An IDX file is malformed; the message is one line naming the file and the problem."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped, by a ``.gz`` suffix) into a native-endian array.

    Raises:
        IdxError: if the file is unreadable, truncated, has trailing bytes, a bad magic
            number or an unknown type code.
    """
    path = Path(path)
    return parse_idx(_read_bytes(path), name=str(path))


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes; ``name`` is only used in error messages."""
    code, ndim = _parse_magic(data, name)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: truncated header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise IdxError(f"{name}: truncated (shape {shape} needs {expected} data bytes, found {found})")
    if found > expected:
        raise IdxError(f"{name}: {found - expected} trailing bytes after the data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # astype copies, giving a writable native-endian array not tied to ``data``.
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip it if ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, _CODES))}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def _parse_magic(data: bytes, name: str) -> tuple[int, int]:
    """Return (type code, ndim) from the first four bytes, validating them."""
    if len(data) < 4:
        raise IdxError(f"{name}: truncated ({len(data)} bytes, an IDX header needs at least 4)")
    zero0, zero1, code, ndim = data[:4]
    magic = int.from_bytes(data[:4], "big")
    if zero0 or zero1:
        raise IdxError(f"{name}: bad magic number 0x{magic:08x} (an IDX file starts with two zero bytes)")
    if code not in DTYPES:
        raise IdxError(f"{name}: unknown IDX type code 0x{code:02x} in magic number 0x{magic:08x}")
    if ndim == 0:
        raise IdxError(f"{name}: magic number 0x{magic:08x} declares zero dimensions")
    return code, ndim


def _read_bytes(path: Path) -> bytes:
    """Read the whole file, decompressing ``.gz``; I/O and gzip errors become IdxError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise IdxError(f"{path}: broken gzip stream ({exc})") from exc
    except OSError as exc:
        raise IdxError(f"{path}: cannot read ({exc.strerror or exc})") from exc
