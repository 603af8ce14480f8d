"""NumPy's ``.npy`` format for export and import: one array, rows along its first axis.

Export writes the header of a C-ordered little-endian array ``(length, *shape)``
and then the rows as they are stored. Import maps the file
(``np.load(mmap_mode="c")``) and reads it a range of rows at a time, so
neither ever holds the whole array in memory.

NumPy has no ``bfloat16`` (nor ``complex32`` or the float8 types): such blobs
are refused, before anything is written; ``.safetensors`` holds ``bfloat16``.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from ._meta import dtype_name
from ._source import Source, check_layout
from .errors import CorruptInputError, UnsupportedFormatError

MAGIC = b"\x93NUMPY"

# The dtypes both sides hold bit for bit, as NumPy ``descr`` strings (little-endian).
_DESCR = {
    torch.bool: "|b1",
    torch.uint8: "|u1",
    torch.int8: "|i1",
    torch.int16: "<i2",
    torch.uint16: "<u2",
    torch.int32: "<i4",
    torch.uint32: "<u4",
    torch.int64: "<i8",
    torch.uint64: "<u8",
    torch.float16: "<f2",
    torch.float32: "<f4",
    torch.float64: "<f8",
    torch.complex64: "<c8",
    torch.complex128: "<c16",
}
_TORCH = {np.dtype(descr): dtype for dtype, descr in _DESCR.items()}


def header(dtype: torch.dtype, shape: tuple[int, ...], length: int, what: str) -> bytes:
    """The ``.npy`` header for ``length`` rows of ``shape`` and ``dtype``; the rows follow it.
    ``what`` names the source in messages (``"blob '/data/x.blob'"``, ...).

    Raises:
        UnsupportedFormatError: NumPy has no dtype for ``dtype`` (``bfloat16``, ...).
    """
    descr = _DESCR.get(dtype)
    if descr is None:
        hint = (
            "export to .safetensors, which holds bfloat16 bit for bit"
            if dtype == torch.bfloat16
            else "export to .safetensors if it holds this dtype, or convert the rows yourself"
        )
        raise UnsupportedFormatError(
            f"cannot export {what} to .npy: NumPy has no {dtype_name(dtype)} dtype; {hint}"
        )
    fields = {"descr": descr, "fortran_order": False, "shape": (length, *shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, fields)
    except ValueError:  # a header over 64 KiB: version 2.0 has a 4-byte length
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, fields)
    return buf.getvalue()


def _read_header(path: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse the header: shape, Fortran order, dtype and the offset of the data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unknown .npy version {version}")
            return shape, fortran, dtype, f.tell()
    except OSError:
        raise
    except Exception as exc:  # numpy's parser raises ValueError, SyntaxError, TokenError...
        raise CorruptInputError(f"{path!r} is not a valid .npy file: {exc}") from None


def open_source(path: str) -> Source:
    """Check the ``.npy`` file at ``path`` and return its rows, read through a mapping.

    Raises:
        CorruptInputError: the header is damaged, or the file is shorter than it says.
        UnsupportedFormatError: a dtype no blob holds (objects, strings, records,
            datetimes, ...), a 0-d array, or a row dimension of 0.
    """
    dims, _, dtype, offset = _read_header(path)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsupportedFormatError(
            f".npy file {path!r} holds {dtype} (objects, records or sub-arrays): a blob "
            "holds plain numbers"
        )
    torch_dtype = _TORCH.get(dtype.newbyteorder("<"))
    if torch_dtype is None:
        raise UnsupportedFormatError(
            f".npy file {path!r} has dtype {dtype.str}, which no blob holds (a blob holds "
            f"{', '.join(sorted(dtype_name(d) for d in _DESCR))} from .npy)"
        )
    shape = check_layout(path, ".npy file", dims)
    length = int(dims[0])
    need = offset + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    size = os.path.getsize(path)
    if size < need:
        raise CorruptInputError(
            f".npy file {path!r} is cut short: it has {size} bytes, its header needs {need}"
        )
    if length == 0:
        return Source(path, "npy", torch_dtype, shape, 0, lambda a, b: _empty(torch_dtype, shape))
    # Copy-on-write mapping: writable, so torch takes it without a warning, and
    # nothing is ever written to it. Pages are read from the file on demand.
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    swap = not dtype.isnative

    def read(start: int, stop: int) -> torch.Tensor:
        rows = array[start:stop]
        if swap:  # a big-endian file: the same values, in the blob's byte order
            rows = rows.astype(dtype.newbyteorder("="))
        return torch.from_numpy(rows)

    return Source(path, "npy", torch_dtype, shape, length, read)


def _empty(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty((0, *shape), dtype=dtype)
