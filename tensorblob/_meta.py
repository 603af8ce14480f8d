"""The ``meta`` file: a blob's identity and row layout, written once at creation (F2).

Meta never changes after creation, so it is read without any lock. Pure
Python: dtypes are handled by their torch names and sizes (a table), so that
the metadata path (``tensorblob info``, ``check``) never imports torch; the
torch dtype is looked up only when asked for (``Meta.dtype``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from . import _format, _records
from .errors import InvalidArgumentError, NotABlobError

META = "meta"

# torch's canonical dtype names (str(dtype) without "torch.") and their sizes.
ITEMSIZE = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex32": 4,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}
# torch's other names for the same dtypes (getattr(torch, alias) is the dtype).
_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}


def _is_torch_dtype(x: object) -> bool:
    cls = type(x)
    return cls.__module__ == "torch" and cls.__name__ == "dtype"


def dtype_name(dtype: object) -> str:
    """The canonical name of a ``torch.dtype`` (``"float32"``) or of a dtype name."""
    if isinstance(dtype, str):
        return parse_dtype(dtype)
    return str(dtype).removeprefix("torch.")


def parse_dtype(dtype: object) -> str:
    """Turn ``"float32"``, ``"torch.float32"``, ``"float"`` or ``torch.float32`` into the
    canonical name ``"float32"``.

    Raises:
        InvalidArgumentError: not a dtype, or a name torch does not have.
    """
    if _is_torch_dtype(dtype):
        return str(dtype).removeprefix("torch.")
    if not isinstance(dtype, str):
        raise InvalidArgumentError(
            f"dtype must be a str or torch.dtype, got {type(dtype).__name__}"
        )
    name = dtype.removeprefix("torch.")
    name = _ALIASES.get(name, name)
    if name in ITEMSIZE:
        return name
    import torch  # noqa: PLC0415 - only for a name the table does not know

    found = getattr(torch, name, None)
    if isinstance(found, torch.dtype):
        return str(found).removeprefix("torch.")
    raise InvalidArgumentError(f"dtype={dtype!r} is not a torch dtype name")


def itemsize(name: str) -> int:
    """Bytes per element of the dtype ``name`` (a canonical name)."""
    size = ITEMSIZE.get(name)
    if size is None:
        import torch  # noqa: PLC0415 - only for a name the table does not know

        size = getattr(torch, name).itemsize
    return size


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` of the canonical name ``name`` (imports torch)."""
    import torch  # noqa: PLC0415 - the metadata path never needs it

    return getattr(torch, name)


def parse_shape(shape: object) -> tuple[int, ...]:
    """Turn ``768``, ``(3, 224, 224)``, ``()`` or a ``torch.Size`` into a row shape."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidArgumentError(f"shape must be an int or a tuple of ints, got {shape!r}")
    if any(d <= 0 for d in shape):
        raise InvalidArgumentError(f"shape={tuple(shape)!r}: every dimension must be positive")
    return tuple(shape)


@dataclass(frozen=True)
class Meta:
    uuid: bytes
    dtype_name: str  # canonical torch name: "float32"
    shape: tuple[int, ...]
    block_size: int

    @functools.cached_property
    def dtype(self) -> Any:
        """The ``torch.dtype`` of the rows (imports torch)."""
        return torch_dtype(self.dtype_name)

    @functools.cached_property
    def row_numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @functools.cached_property
    def row_bytes(self) -> int:
        return self.row_numel * itemsize(self.dtype_name)

    def encode(self) -> bytes:
        body = {
            "uuid": self.uuid,
            "dtype": self.dtype_name,
            "shape": list(self.shape),
            "block_size": self.block_size,
        }
        return _format.encode_file(_format.MAGIC_META, body)


def read_meta(root: str) -> Meta:
    """Read and validate ``root/meta``; raise NotABlobError if there is none."""
    path = os.path.join(root, META)
    try:
        data = _format.read_file(path)
    except FileNotFoundError:
        raise NotABlobError(f"{root!r} is not a tensorblob: it has no meta file") from None
    except IsADirectoryError:
        raise NotABlobError(f"{root!r} is not a tensorblob: {path!r} is a directory") from None
    what = f"meta file {path!r}"
    body = _format.decode_file(_format.MAGIC_META, data, what)
    _records.check_meta(body, what)
    try:
        name = parse_dtype(body["dtype"])
        shape = parse_shape(body["shape"])
    except InvalidArgumentError as exc:
        _records.corrupt(what, str(exc), "schema")
    return Meta(body["uuid"], name, shape, body["block_size"])
