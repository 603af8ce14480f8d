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
from .errors import BlobTypeError, InvalidArgumentError, NotABlobError

META = "meta"

# The dtypes a blob stores: torch's canonical names (str(dtype) without
# "torch.") of its plain dtypes, and their sizes.
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
        InvalidArgumentError: a name torch does not have, or a dtype whose rows are
            not plain bytes (quantized, bits, sub-byte): not in ``ITEMSIZE``.
    """
    if _is_torch_dtype(dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        name = _ALIASES.get(name, name)
        if name not in ITEMSIZE:
            import torch  # noqa: PLC0415 - only for a name the table does not know

            found = getattr(torch, name, None)
            if not isinstance(found, torch.dtype):
                raise InvalidArgumentError(f"dtype={dtype!r} is not a torch dtype name")
            name = str(found).removeprefix("torch.")
    else:
        raise BlobTypeError(f"dtype must be str or torch.dtype, got {type(dtype).__name__}")
    if name not in ITEMSIZE:  # a row of them is not just its bytes
        raise InvalidArgumentError(
            f"dtype {name} cannot be stored: quantized, bit and sub-byte dtypes are not "
            f"plain bytes (their scale or packing would be lost); one of {sorted(ITEMSIZE)}"
        )
    return name


def itemsize(name: str) -> int:
    """Bytes per element of the dtype ``name`` (a canonical name, see ``parse_dtype``)."""
    return ITEMSIZE[name]


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


# A TensorDB's field names: what a user would call a column (F2). Not a path
# component, but kept safe to be one (the original tensorblob made each a
# directory, and a field may well become a file name of an export).
MAX_FIELD_NAME = 255
# Each field's rows start at a multiple of this many bytes in a block file
# (F8): aligned for every dtype, and a field never shares a cache line.
FIELD_ALIGN = 64


def check_field_name(name: object) -> str:
    """A valid field name, else InvalidArgumentError (or BlobTypeError if not a str)."""
    if not isinstance(name, str):
        raise BlobTypeError(f"a field name must be a str, got {type(name).__name__}")
    if (
        not name
        or len(name) > MAX_FIELD_NAME
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or not name.isprintable()
    ):
        raise InvalidArgumentError(
            f"Invalid field name: {name!r}: 1 to {MAX_FIELD_NAME} printable characters, "
            "no '/' or '\\', not starting with '.'"
        )
    return name


@dataclass(frozen=True)
class Field:
    """One field of a row: its name (``""`` for a blob's), element type, shape, and where
    its rows start in a block file (``offset``, in bytes)."""

    name: str
    dtype_name: str  # canonical torch name: "float32"
    shape: tuple[int, ...]
    offset: int = 0

    @functools.cached_property
    def dtype(self) -> Any:
        """The ``torch.dtype`` of the field (imports torch)."""
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


def layout(specs: list[tuple[str, str, tuple[int, ...]]], block_size: int) -> tuple[Field, ...]:
    """The fields ``(name, dtype name, shape)`` placed in a block file of ``block_size`` rows
    (F8): one after the other, each at the next multiple of FIELD_ALIGN."""
    fields, at = [], 0
    for name, dtype, shape in specs:
        f = Field(name, dtype, shape, at)
        fields.append(f)
        at = -(-(at + block_size * f.row_bytes) // FIELD_ALIGN) * FIELD_ALIGN
    return tuple(fields)


@dataclass(frozen=True)
class Meta:
    """A blob's identity and row layout. A ``TensorBlob`` has one field (named ``""``);
    a ``TensorDB`` (``db``) has its schema's, in order."""

    uuid: bytes
    fields: tuple[Field, ...]
    block_size: int
    db: bool = False

    @classmethod
    def blob(cls, uuid: bytes, dtype_name: str, shape: tuple[int, ...], block_size: int) -> Meta:
        return cls(uuid, layout([("", dtype_name, shape)], block_size), block_size)

    @classmethod
    def database(
        cls, uuid: bytes, specs: list[tuple[str, str, tuple[int, ...]]], block_size: int
    ) -> Meta:
        return cls(uuid, layout(specs, block_size), block_size, db=True)

    # The one field of a blob (for a TensorDB: its first).
    @property
    def dtype_name(self) -> str:
        return self.fields[0].dtype_name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.fields[0].shape

    @property
    def dtype(self) -> Any:
        """The ``torch.dtype`` of a blob's rows (imports torch)."""
        return self.fields[0].dtype

    @property
    def row_numel(self) -> int:
        return self.fields[0].row_numel

    @functools.cached_property
    def row_bytes(self) -> int:
        """Bytes of one row, all fields together."""
        return sum(f.row_bytes for f in self.fields)

    @functools.cached_property
    def block_bytes(self) -> int:
        """The size of every block file."""
        last = self.fields[-1]
        return last.offset + self.block_size * last.row_bytes

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def kind(self) -> str:
        return "TensorDB" if self.db else "TensorBlob"

    @property
    def noun(self) -> str:
        """What messages call it: "database" or "blob"."""
        return "database" if self.db else "blob"

    def encode(self) -> bytes:
        if not self.db:
            body = {
                "uuid": self.uuid,
                "dtype": self.dtype_name,
                "shape": list(self.shape),
                "block_size": self.block_size,
            }
            return _format.encode_file(_format.MAGIC_META, body)
        body = {
            "uuid": self.uuid,
            "fields": [[f.name, f.dtype_name, list(f.shape)] for f in self.fields],
            "block_size": self.block_size,
        }
        return _format.encode_file(_format.MAGIC_META, body, _format.DB_VERSION)


def read_meta(root: str) -> Meta:
    """Read and validate ``root/meta``; raise NotABlobError if there is none."""
    path = os.path.join(root, META)
    try:
        data = _format.read_file(path)
    except FileNotFoundError:
        raise NotABlobError(f"{root!r} is not a tensorblob: it has no meta file") from None
    except IsADirectoryError:
        raise NotABlobError(f"{root!r} is not a tensorblob: {path!r} is a directory") from None
    except NotADirectoryError:
        raise NotABlobError(f"{root!r} is not a tensorblob (it is not a directory)") from None
    meta = _DECODED.get(path, data)
    if meta is None:
        meta = _decode_meta(root, data)
        _DECODED.put(path, data, meta)
    return meta


_DECODED = _format.Decoded()  # Meta is frozen: the one decoded value is shared


def _decode_meta(root: str, data: bytes) -> Meta:
    path = os.path.join(root, META)
    what = f"meta file {path!r}"
    body = _format.decode_file(_format.MAGIC_META, data, what)
    _records.check_meta(body, what)
    try:
        if "fields" not in body:
            name = parse_dtype(body["dtype"])
            shape = parse_shape(body["shape"])
            return Meta.blob(body["uuid"], name, shape, body["block_size"])
        specs = [
            (check_field_name(n), parse_dtype(d), parse_shape(s)) for n, d, s in body["fields"]
        ]
    except (InvalidArgumentError, BlobTypeError) as exc:
        _records.corrupt(what, str(exc), "schema")
    if len({n for n, _, _ in specs}) != len(specs):
        _records.corrupt(what, "two fields have the same name", "schema")
    return Meta.database(body["uuid"], specs, body["block_size"])
