"""The ``meta`` file: a blob's identity and row layout, written once at creation (F2).

Meta never changes after creation, so it is read without any lock.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from . import _format
from .errors import CorruptBlobError, InvalidArgumentError, NotABlobError

META = "meta"


def parse_dtype(dtype: object) -> torch.dtype:
    """Turn ``"float32"``, ``"torch.float32"`` or ``torch.float32`` into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        found = getattr(torch, name, None)
        if isinstance(found, torch.dtype):
            return found
        raise InvalidArgumentError(f"dtype={dtype!r} is not a torch dtype name")
    raise InvalidArgumentError(f"dtype must be a str or torch.dtype, got {type(dtype).__name__}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_shape(shape: object) -> tuple[int, ...]:
    """Turn ``768``, ``(3, 224, 224)``, ``()`` or a ``torch.Size`` into a row shape."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidArgumentError(f"shape must be an int or a tuple of ints, got {shape!r}")
    if any(d <= 0 for d in shape):
        raise InvalidArgumentError(f"shape={tuple(shape)!r}: every dimension must be positive")
    return tuple(shape)


@dataclass(frozen=True)
class Meta:
    uuid: bytes
    dtype: torch.dtype
    shape: tuple[int, ...]
    block_size: int

    @functools.cached_property
    def row_numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @functools.cached_property
    def row_bytes(self) -> int:
        return self.row_numel * self.dtype.itemsize

    def encode(self) -> bytes:
        body = {
            "uuid": self.uuid,
            "dtype": dtype_name(self.dtype),
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
    _format.check_meta(body, what)
    try:
        dtype = parse_dtype(body["dtype"])
        shape = parse_shape(body["shape"])
    except InvalidArgumentError as exc:
        raise CorruptBlobError(f"{what}: {exc}") from None
    return Meta(body["uuid"], dtype, shape, body["block_size"])
