"""The checks of every argument the public API takes: a refused call changes nothing.

Each raises the library's own error naming the argument (G5). Also the
conversions they lead to: a path to an absolute one, a tensor to contiguous
CPU rows, an index to positions.
"""

from __future__ import annotations

import operator
import os
from typing import Any

import numpy as np
import torch

from ._meta import Field
from .errors import (
    BlobTypeError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    ShapeMismatchError,
)

MODES = ("r", "w", "a", "r+", "w+", "a+")
SYNC = ("normal", "full")
DEFAULT_BLOCK_SIZE = 8192
# A block file is mapped whole, and a process has 128 TiB of address space.
MAX_BLOCK_BYTES = 1 << 46
DEFAULT_TIMEOUT = 30.0


def abspath(path: str | os.PathLike[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise BlobTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def check_open(  # noqa: PLR0917 - open()'s keyword arguments
    mode: object,
    sync: object,
    max_cached_blocks: object,
    block_size: object,
    timeout: object,
    verify: object,
    trust_fs: object,
) -> None:
    """Check ``open()``'s arguments (InvalidArgumentError naming the first bad one)."""
    if not isinstance(mode, str) or mode not in MODES:
        raise InvalidArgumentError(
            f"Invalid mode {mode!r}: must have exactly one of r, w, a and at most one '+' "
            f"({', '.join(MODES)})"
        )
    if sync not in SYNC:
        raise InvalidArgumentError(f"sync={sync!r}: must be 'normal' or 'full'")
    if max_cached_blocks is not None and (
        not isinstance(max_cached_blocks, int)
        or isinstance(max_cached_blocks, bool)
        or max_cached_blocks < 1
    ):
        raise InvalidArgumentError(
            f"max_cached_blocks={max_cached_blocks!r}: must be a positive int or None"
        )
    if block_size is not None and (
        not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1
    ):
        raise InvalidArgumentError(f"block_size={block_size!r}: must be a positive int")
    check_timeout(timeout)
    if not isinstance(verify, bool):
        raise InvalidArgumentError(f"verify={verify!r}: must be True or False")
    if not isinstance(trust_fs, bool):
        raise InvalidArgumentError(f"trust_fs={trust_fs!r}: must be True or False")


def check_timeout(timeout: object) -> None:
    """``timeout``: seconds to wait for the writer lock, a number, 0 or more (inf: for ever)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidArgumentError(f"timeout={timeout!r}: must be a non-negative number")


def as_int(x: object, what: str) -> int:
    if isinstance(x, (bool, np.bool_)) or (
        isinstance(x, torch.Tensor) and (x.dim() != 0 or x.dtype == torch.bool)
    ):  # (torch takes a one-element tensor, or a bool one, as an int)
        if isinstance(x, (bool, np.bool_)) or x.dtype == torch.bool:
            raise BlobTypeError(f"{what} must be an int, got a bool ({x!r})")
        raise BlobTypeError(f"{what} must be an int, got a tensor of shape {tuple(x.shape)}")
    try:
        return operator.index(x)  # type: ignore[arg-type]
    except TypeError:
        raise BlobTypeError(f"{what} must be an int, got {type(x).__name__}") from None


def as_rows(t: object, fld: Field) -> torch.Tensor:
    """Validate a tensor to write to field ``fld`` (a blob's one field, or a TensorDB's) and
    return it as contiguous CPU rows ``(n, *shape)``."""
    which = f"field {fld.name!r}: " if fld.name else ""
    if not isinstance(t, torch.Tensor):
        raise BlobTypeError(f"write(): {which}takes a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided or t.is_meta:
        what = "a tensor on the meta device, which holds no data" if t.is_meta else t.layout
        raise BlobTypeError(
            f"write(): {which}takes a dense tensor with data, got {what} "
            "(convert it first, e.g. with .to_dense())"
        )
    if t.dtype != fld.dtype:
        kind = "field" if fld.name else "blob"
        raise DTypeMismatchError(
            f"write(): {which}tensor dtype {t.dtype} does not match {kind} dtype {fld.dtype}; "
            "cast it explicitly with .to(dtype)"
        )
    shape = tuple(t.shape)
    if shape == fld.shape:
        rows = t.unsqueeze(0)
    elif shape[1:] == fld.shape:
        rows = t
    elif t.dim() == 1 and fld.shape and t.numel() % fld.row_numel == 0:
        rows = t.reshape(-1, *fld.shape)
    else:
        raise ShapeMismatchError(
            f"write(): {which}tensor of shape {shape} is not a row {fld.shape}, a batch "
            f"(n, *{fld.shape}), or a flat tensor of a multiple of {fld.row_numel} elements"
        )
    if not rows.is_cpu:
        rows = rows.cpu()
    # Rows are copied as raw bytes: materialise lazy negation and conjugation.
    rows = rows.resolve_conj().resolve_neg()
    return rows if rows.is_contiguous() else rows.contiguous()


def dense_index(index: torch.Tensor) -> None:
    """Refuse a tensor index without data to read positions from (BlobTypeError)."""
    if index.is_meta or index.layout != torch.strided:
        what = "on the meta device, which holds no data" if index.is_meta else str(index.layout)
        raise BlobTypeError(f"a tensor index must be a dense tensor with data, got one {what}")


def index_tensor(index: Any, length: int, what: str) -> torch.Tensor:
    """A list, tuple, 1-D integer tensor or ndarray index as int64 positions (maybe
    negative); a 1-D bool tensor or ndarray of ``length`` as the positions it selects.
    ``what`` names the reader, for messages.

    Raises:
        BlobTypeError: another type, a float index, a 2-D tensor; the message names
            the offending item of a list. (A tensor without data is the caller's to
            refuse first: ``dense_index``.)
        InvalidIndexError: a boolean mask whose length is not ``length``; a
            position past int64 (which would wrap).
    """
    if isinstance(index, (list, tuple)):
        if not set(map(type, index)) <= {int}:  # (one pass over types: a batch is plain ints)
            for k, i in enumerate(index):
                if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
                    raise BlobTypeError(
                        f"a list or tuple index must hold only ints (an integer dtype); "
                        f"item {k} is {i!r} ({type(i).__name__})"
                    )
            index = [int(i) for i in index]
        try:
            return torch.from_numpy(np.array(index, dtype=np.int64))
        except OverflowError:  # an int past int64: out of bounds at any length
            bad = next(i for i in index if not -(2**63) <= i < 2**63)
            raise InvalidIndexError(
                f"index {bad} is out of bounds for {what} of length {length}"
            ) from None
    # (A tensor is dense: plan() checked it, dense_index.) A uint64 one is converted
    # below as numpy's, checked for wrapping.
    if isinstance(index, torch.Tensor) and index.dtype == torch.uint64:
        index = index.cpu().numpy()
    if isinstance(index, np.ndarray):
        if index.dtype == np.bool_:
            index = torch.from_numpy(np.array(index, copy=True))
        elif index.dtype.kind not in "iu":
            raise BlobTypeError(
                f"an ndarray index must have an integer dtype (or be a bool mask), "
                f"not {index.dtype}"
            )
        else:
            if index.dtype == np.uint64 and index.size and index.max() >= 2**63:
                bad = int(index.max())  # int64 would wrap it to a negative position
                raise InvalidIndexError(
                    f"index {bad} is out of bounds for {what} of length {length}"
                )
            index = torch.from_numpy(np.array(index, dtype=np.int64, copy=True))
    if isinstance(index, torch.Tensor):
        if index.dtype.is_floating_point or index.dtype.is_complex:
            raise BlobTypeError(
                f"a tensor index must have an integer dtype (or be a bool mask), not {index.dtype}"
            )
        if index.dim() > 1:
            raise InvalidArgumentError(
                f"a tensor index must be 1-dimensional, got shape {tuple(index.shape)}"
            )
        if index.dtype == torch.bool:  # a mask, as in torch and numpy
            if index.dim() == 0:
                raise BlobTypeError("a bool is not an index; a boolean mask is 1-D")
            if index.shape[0] != length:
                raise InvalidIndexError(
                    f"a boolean mask must have one entry per row ({length}), "
                    f"got {tuple(index.shape)}"
                )
            return torch.nonzero(index.cpu()).reshape(-1)
        return index.reshape(-1).to(device="cpu", dtype=torch.int64)
    raise BlobTypeError(
        f"Index must be int, slice, list, tuple, or a 1-D int or bool tensor or ndarray, "
        f"not {type(index).__name__}"
    )
