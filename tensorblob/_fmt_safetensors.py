"""The ``.safetensors`` format for export and import: named tensors, rows along their first axis.

A safetensors file is an 8-byte little-endian header length, a JSON header
(padded with spaces to a multiple of 8 bytes), then the tensors' bytes,
C-ordered and little-endian. Export writes that header for one tensor
(named ``"data"`` unless told otherwise), or one per field of a TensorDB
(named after the fields), and streams the rows after it, so it needs no
third-party package and never holds the blob in memory. Import
checks the header itself (for clear errors), then reads a range of rows at a
time with the ``safetensors`` package's ``safe_open``, an optional dependency
(``pip install 'tensorblob[safetensors]'``).

Unlike ``.npy``, safetensors holds ``bfloat16`` (``"BF16"``) and the float8
types; it has no ``complex128`` or ``complex32``.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import torch

from ._formats import DEFAULT_NAME
from ._meta import dtype_name
from ._source import Source, check_layout
from .errors import (
    CorruptInputError,
    InvalidArgumentError,
    MissingDependencyError,
    UnsupportedFormatError,
)

_MAX_HEADER = 100_000_000  # the safetensors package's own bound
_CODES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.int64: "I64",
    torch.uint64: "U64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


def check_name(name: object) -> str:
    """Return ``name`` if it can name a tensor in a safetensors file.

    Raises:
        InvalidArgumentError: not a non-empty str, or the reserved ``"__metadata__"``.
    """
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise InvalidArgumentError(
            f"name={name!r}: a safetensors tensor name must be a non-empty str other than "
            "'__metadata__'"
        )
    return name


def header(
    tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], length: int, what: str
) -> bytes:
    """The safetensors header for ``length`` rows of each ``(name, dtype, shape)`` in
    ``tensors``, stored one after the other in that order; their rows follow it.
    ``what`` names the source in messages (``"blob '/data/x.blob'"``, ...).

    Raises:
        UnsupportedFormatError: safetensors has no code for a dtype (``complex128``, ...).
    """
    table: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    at = 0
    for name, dtype, shape in tensors:
        code = _CODES.get(dtype)
        if code is None:
            raise UnsupportedFormatError(
                f"cannot export {what} to .safetensors: it has no {dtype_name(dtype)} dtype"
                + ("; export to .npy, which holds it" if dtype == torch.complex128 else "")
            )
        nbytes = length * dtype.itemsize
        for d in shape:
            nbytes *= d
        table[name] = {"dtype": code, "shape": [length, *shape], "data_offsets": [at, at + nbytes]}
        at += nbytes
    text = json.dumps(table, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _read_header(path: str) -> dict[str, Any]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptInputError(f"{path!r} is not a valid .safetensors file: under 8 bytes")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CorruptInputError(
                f"{path!r} is not a valid .safetensors file: its header length {n} does not "
                f"fit the file's {size} bytes"
            )
        text = f.read(n)
    try:
        table = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptInputError(f"{path!r}: the .safetensors header is not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise CorruptInputError(f"{path!r}: the .safetensors header is not a JSON object")
    data = size - 8 - n
    for key, entry in table.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = entry["data_offsets"]
            ok = isinstance(entry["shape"], list) and 0 <= lo <= hi <= data
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CorruptInputError(
                f"{path!r}: the .safetensors entry of tensor {key!r} is damaged, or its bytes "
                f"lie past the end of the file ({data} bytes of data)"
            )
    return table


def tensor_names(path: str) -> list[str]:
    """The tensors of the ``.safetensors`` file at ``path``, in the order of their bytes
    (for a TensorDB's export, the order of its fields).

    Raises:
        CorruptInputError: the header is damaged or points past the end of the file.
    """
    table = _read_header(path)
    names = [k for k in table if k != "__metadata__"]
    return sorted(names, key=lambda k: (table[k]["data_offsets"][0], k))


def open_source(path: str, name: str | None) -> Source:
    """Check the ``.safetensors`` file at ``path`` and return the rows of one of its tensors.

    ``name`` picks the tensor; None means ``"data"`` if present, else the only
    tensor of the file.

    Raises:
        MissingDependencyError: the ``safetensors`` package is not installed.
        CorruptInputError: the header is damaged or points past the end of the file.
        InvalidArgumentError: no tensor ``name``, or None and several tensors, none "data".
        UnsupportedFormatError: a dtype no blob holds, a 0-d tensor, or a row dimension of 0.
    """
    table = _read_header(path)
    tensors = sorted(k for k in table if k != "__metadata__")
    if name is None:
        only = len(tensors) == 1 and DEFAULT_NAME not in table
        name = tensors[0] if only else DEFAULT_NAME
    if name not in tensors:
        raise InvalidArgumentError(
            f"{path!r} has no tensor {name!r}; pass name= one of: "
            + (", ".join(repr(t) for t in tensors[:20]) or "(none: the file holds no tensor)")
        )
    entry = table[name]
    dtype = _DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise UnsupportedFormatError(
            f"tensor {name!r} of {path!r} has dtype {entry.get('dtype')!r}, which no blob "
            f"holds (from .safetensors: {', '.join(sorted(_DTYPES))})"
        )
    dims = tuple(entry["shape"])
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise CorruptInputError(f"{path!r}: tensor {name!r} has a bad shape {dims!r}")
    shape = check_layout(path, f"tensor {name!r} of", dims)
    lo, hi = entry["data_offsets"]
    want = dtype.itemsize
    for d in dims:
        want *= d
    if hi - lo != want:
        raise CorruptInputError(
            f"{path!r}: tensor {name!r} of shape {dims} needs {want} bytes, "
            f"its entry says {hi - lo}"
        )
    length = dims[0]
    if length == 0:
        return Source(path, "safetensors", dtype, shape, 0, lambda a, b: _empty(dtype, shape))
    try:
        from safetensors import safe_open  # noqa: PLC0415 - an optional dependency
    except ImportError:
        raise MissingDependencyError(
            f"importing {path!r} needs the safetensors package: "
            "pip install 'tensorblob[safetensors]'"
        ) from None
    try:
        handle = safe_open(path, framework="pt")
        tensor = handle.get_slice(name)
    except Exception as exc:  # the package's own errors (SafetensorError) are not exported
        raise CorruptInputError(f"{path!r}: safetensors cannot read it: {exc}") from None

    def read(start: int, stop: int) -> torch.Tensor:
        return tensor[start:stop]

    def close() -> None:
        handle.__exit__(None, None, None)

    return Source(path, "safetensors", dtype, shape, length, read, close=close)


def _empty(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty((0, *shape), dtype=dtype)
