"""Rows out of a snapshot, one field at a time: index plans, ranges, gathers.

Every reader's indexing goes through here (``TensorBlob``, ``TensorDB`` and
a ``TensorDB`` column): ``plan`` turns an index into what to read, checked
against the snapshot's length once, and ``take`` reads it from one field.
A ``TensorDB`` reads each field with the same plan, so its fields always
come from the same rows. Results never alias the block files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._args import as_int, dense_index, index_tensor
from ._blocks import BlockStore
from ._meta import Field
from .errors import (
    BlobTypeError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    ShapeMismatchError,
)

# What to read: one row (an int), a run of rows (start, stop), or rows at
# positions (an int64 ndarray, in bounds, any order, repeats allowed).
Plan = int | tuple[int, int] | np.ndarray


class Rows(list):  # a real list: default_collate hands it to torch.stack
    """The rows of a ``__getitems__`` batch, with the batch they are views of in ``collated``
    (a tensor, or a dict of tensors for a TensorDB) and its row count in ``n``."""

    collated: Any
    n: int


def plan(index: Any, n: int, what: str) -> Plan:
    """What ``index`` selects from ``n`` rows (``what`` names the reader, for messages).

    Raises:
        InvalidIndexError: an index is out of bounds.
        BlobTypeError: the index is of an unsupported type (str, float, bool, ...).
        InvalidArgumentError: a slice step is 0, or a tensor index is not 1-D.
    """
    if isinstance(index, torch.Tensor):
        dense_index(index)
    if isinstance(index, np.integer) or (
        isinstance(index, (torch.Tensor, np.ndarray))  # a 0-d integer one is a position
        and index.ndim == 0
        and (
            index.dtype.kind in "iu"
            if isinstance(index, np.ndarray)
            else not index.dtype.is_floating_point and index.dtype != torch.bool
        )
    ):
        index = int(index)
    if isinstance(index, int) and not isinstance(index, bool):
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise InvalidIndexError(f"index {index} is out of bounds for {what} of length {n}")
        return i
    if isinstance(index, slice):
        if any(isinstance(x, bool) for x in (index.start, index.stop, index.step)):
            raise BlobTypeError(f"slice bounds must be ints or None, got {index!r}")
        if index.step == 0:
            raise InvalidArgumentError("slice step cannot be zero")
        try:
            start, stop, step = index.indices(n)
        except TypeError:
            raise BlobTypeError(f"slice bounds must be ints or None, got {index!r}") from None
        if step == 1:
            return (start, max(start, stop))
        return np.arange(start, stop, step, dtype=np.int64)
    ia = index_tensor(index, n, what).numpy()
    if ia.size:
        lo, hi = int(ia.min()), int(ia.max())
        if lo < 0:  # negative positions count from the end
            ia = np.where(ia < 0, ia + n, ia)
            lo, hi = int(ia.min()), int(ia.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise InvalidIndexError(
                f"index {bad if bad >= 0 else bad - n} is out of bounds for {what} of length {n}"
            )
    return ia


def count(p: Plan) -> int:
    """How many rows the plan reads (0 for one row: it has no batch dimension)."""
    if isinstance(p, int):
        return 0
    if isinstance(p, tuple):
        return p[1] - p[0]
    return len(p)


def take(
    store: BlockStore, slots: list[int], f: int, p: Plan, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Read plan ``p`` from field ``f`` of the snapshot whose slot list is ``slots``: into a
    new tensor, or into the first rows of ``out`` (checked, see ``into``), returned."""
    if isinstance(p, int):
        slot, off = divmod(p, store.meta.block_size)
        if out is None:
            return store.row(slots[slot], off, f)
        return into(out, store.meta.fields[f], None).copy_(store.get(slots[slot], f)[off])
    if isinstance(p, tuple):
        return span(store, slots, f, p[0], p[1], out=out)
    return gather(store, slots, f, p, out)


def into(out: object, fld: Field, n: int | None) -> torch.Tensor:
    """``out``, checked to take ``n`` rows of ``fld`` (None: one row, without the batch
    dimension); return the part of it that does: ``out[:n]``.

    Raises:
        BlobTypeError: ``out`` is not a tensor.
        DTypeMismatchError: it has another dtype.
        ShapeMismatchError: its rows have another shape, or it has too few.
        InvalidArgumentError: it is not a contiguous CPU tensor (pinned or not).
    """
    which = f" for field {fld.name!r}" if fld.name else ""
    if not isinstance(out, torch.Tensor):
        raise BlobTypeError(f"out={type(out).__name__}{which}: must be a torch.Tensor")
    if out.dtype != fld.dtype:
        raise DTypeMismatchError(f"out{which} has dtype {out.dtype}, the rows {fld.dtype}")
    if not out.is_cpu or not out.is_contiguous():
        raise InvalidArgumentError(f"out{which} must be a contiguous CPU tensor (pinned or not)")
    if n is None:
        if tuple(out.shape) != fld.shape:
            raise ShapeMismatchError(f"out{which} has shape {tuple(out.shape)}; a row {fld.shape}")
        return out
    if out.dim() != len(fld.shape) + 1 or tuple(out.shape[1:]) != fld.shape:
        raise ShapeMismatchError(
            f"out{which} has shape {tuple(out.shape)}; rows need (n, *{fld.shape})"
        )
    if out.shape[0] < n:
        raise ShapeMismatchError(f"out{which} has room for {out.shape[0]} rows, {n} are read")
    return out[:n]


def span(
    store: BlockStore,
    slots: list[int],
    f: int,
    start: int,
    stop: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Copy rows ``start:stop`` (within bounds) of field ``f`` into a new tensor (or into
    ``out``, see ``take``)."""
    fld = store.meta.fields[f]
    n = max(0, stop - start)
    if out is not None:
        dst = into(out, fld, n)
        if n:
            _span_into(store, slots, f, start, stop, dst.view(torch.uint8).numpy())
        return dst
    if n == 0:
        return _empty(fld)
    # Copied as bytes with numpy: one plain memcpy per block, like a raw
    # np.memmap copy (torch's threaded copy stalls on a busy machine), into a
    # buffer placed as _buffer says.
    B = store.meta.block_size
    s0, o0 = divmod(start, B)
    size = n * fld.row_bytes
    if n <= B - o0 and size < MAPPED:
        raw = store.get_bytes(slots[s0], f)[o0 : o0 + n].copy()
        return torch.from_numpy(raw).view(fld.dtype).reshape(n, *fld.shape)
    raw, t = _buffer(n, fld.row_bytes, fld.offset + o0 * fld.row_bytes)
    if n <= B - o0:
        np.copyto(raw, store.get_bytes(slots[s0], f)[o0 : o0 + n])
    else:
        _span_into(store, slots, f, start, stop, raw)
    return t.view(fld.dtype).reshape(n, *fld.shape)


FEW = 64  # rows gathered one by one (docs/performance.md, "Gathers in one call")
PAGE = 4096
MAPPED = 128 << 10  # glibc's default mmap threshold: smaller buffers come from the heap


def _buffer(n: int, row_bytes: int, at: int) -> tuple[np.ndarray, torch.Tensor]:
    """An uninitialised ``(n, row_bytes)`` uint8 array, and a tensor over it, for bytes
    copied from ``at`` bytes into a page (block mappings start on a page): not 1 to 63
    bytes past them modulo a page.

    A memcpy whose destination lies just past its source, modulo a page,
    runs 3 to 10x slower on this machine (AMD Zen's ``rep movsb`` under
    glibc 2.36: 4K aliasing), and a large buffer that malloc maps afresh
    (over 32 MB, or the first of its size) starts 16 bytes into a page:
    reading 40 MB of a 4-byte field took 23-32 ms against 8-11 (performance.md).
    """
    raw = np.empty((n, row_bytes), dtype=np.uint8)
    t = torch.from_numpy(raw)
    if 0 < (t.data_ptr() - at) % PAGE < 64:
        buf = np.empty(raw.size + PAGE, dtype=np.uint8)
        k = (at - buf.ctypes.data) % PAGE
        raw = buf[k : k + raw.size].reshape(n, row_bytes)
        t = torch.from_numpy(raw)
    return raw, t


def _span_into(  # noqa: PLR0917 - span()'s arguments
    store: BlockStore, slots: list[int], f: int, start: int, stop: int, raw: np.ndarray
) -> None:
    """Copy rows ``start:stop`` of field ``f`` into the bytes ``raw`` (any shape, C order)."""
    store.span_into(slots, f, start, stop, raw.reshape(stop - start, -1))


def gather(
    store: BlockStore,
    slots: list[int],
    f: int,
    ia: np.ndarray,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows of field ``f`` at the positions ``ia`` (in bounds, any order, repeats allowed),
    in a new tensor (or in ``out``, see ``take``)."""
    fld = store.meta.fields[f]
    n = len(ia)
    dst = None if out is None else into(out, fld, n)
    if n == 0:
        return _empty(fld) if dst is None else dst
    # Rows are gathered as raw bytes, so any dtype works.
    raw = None if dst is None else dst.view(torch.uint8).reshape(n, fld.row_bytes)
    B = store.meta.block_size
    if n <= min(FEW, store.max_cached):  # a row at a time: the calls of one gather cost
        # more than a few rows (and no row evicts a block that a later one needs)
        buf = np.empty((n, fld.row_bytes), dtype=np.uint8) if raw is None else raw.numpy()
        for k, i in enumerate(ia.tolist()):
            buf[k] = store.get_bytes(slots[i // B], f)[i % B]
        got = torch.from_numpy(buf) if raw is None else raw
        return dst if dst is not None else got.view(fld.dtype).reshape(n, *fld.shape)
    lo, hi = int(ia.min()), int(ia.max())
    if lo // B == hi // B:  # one block: its mapping, indexed directly
        rows = torch.from_numpy(store.get_bytes(slots[lo // B], f))
        at = torch.from_numpy(ia - (lo // B) * B)
        if raw is None:
            got = torch.index_select(rows, 0, at)
        else:
            got = torch.index_select(rows, 0, at, out=raw)
    else:
        s = ia // B
        got = store.gather(slots, s, ia - s * B, f, raw)
    return dst if dst is not None else got.view(fld.dtype).reshape(n, *fld.shape)


def items(indices: Any, n: int, what: str, take: Any, unbatch: Any) -> Rows:
    """``__getitems__`` of a reader or column of ``n`` rows: ``take`` gathers the batch,
    ``unbatch`` splits it into rows (``Reader.__getitems__`` says what it returns)."""
    p = plan(indices, n, what)
    if not isinstance(p, np.ndarray):
        raise BlobTypeError(f"__getitems__ takes a sequence of indices, not {indices!r}")
    batch = take(p)
    rows = Rows(unbatch(batch))
    rows.collated, rows.n = batch, len(rows)
    return rows


def _empty(fld: Field) -> torch.Tensor:
    return torch.empty((0, *fld.shape), dtype=fld.dtype)


class Reader:
    """Reading through the cursor and by index: what ``TensorBlob`` and ``TensorDB`` share.

    A mixin of a handle (``_state``, ``_pos``, ``_path``, ``_writable``,
    ``block_size``, ``_check_open``, ``_check_readable``). The front end says what rows are:
    ``_take`` reads a plan (a tensor for a blob, a dict of tensors for a
    TensorDB) and ``_unbatch`` splits a batch of it into rows.
    """

    _state: Any
    _pos: int
    _path: str
    _closed: bool
    _writable: bool
    block_size: int
    _KIND = "blob"

    def _check_open(self) -> None: ...
    def _check_readable(self) -> None: ...

    def _take(self, p: Plan, out: Any = None) -> Any:
        raise NotImplementedError

    def _unbatch(self, batch: Any) -> Any:
        raise NotImplementedError

    def read(self, size: int | None = None, *, out: Any = None) -> Any:
        """Read up to ``size`` rows from the cursor (all the rest if None or negative).

        Returns new tensors ``(k, *shape)`` (a dict of them for a TensorDB) that
        do not alias the files; ``k == 0`` at the end. Advances the cursor by ``k``.
        With ``out`` (a contiguous CPU tensor of the dtype, with room for the
        rows: ``(m, *shape)``, ``m >= k``; pinned for a GPU copy, or not; for a
        TensorDB a dict of them, one per field), the rows are copied straight
        into it and ``out[:k]`` is returned: no other copy is made.

        Raises:
            UnsupportedOperationError: open write-only (``"w"``, ``"a"``).
            BlobTypeError: ``size`` is not an int or None, or ``out`` not a tensor.
            DTypeMismatchError: ``out`` has another dtype (nothing is read then).
            ShapeMismatchError: ``out``'s rows have another shape, or it has too few.
            InvalidArgumentError: ``out`` is not a contiguous CPU tensor.
            BlobClosedError: closed.
        """
        self._check_readable()
        n = self._state.length
        size = -1 if size is None else as_int(size, "read(size)")
        end = n if size < 0 else min(n, self._pos + size)
        rows = self._take((self._pos, max(self._pos, end)), out)
        self._pos = max(self._pos, end)
        return rows

    def take(self, index: Any, *, out: Any = None) -> Any:
        """``self[index]``, copied into ``out`` (see ``read``): a batch for a slice or a
        sequence of indices (``out`` has room for at least its rows; ``out[:k]`` is
        returned), one row for an int (``out`` has the row's shape).

        Raises:
            InvalidIndexError: an index is out of bounds.
            BlobTypeError: the index, or ``out``, is of an unsupported type.
            DTypeMismatchError: ``out`` has another dtype (nothing is read then).
            ShapeMismatchError: ``out`` does not have the rows' shape, or room for them.
            InvalidArgumentError: ``out`` is not a contiguous CPU tensor.
            BlobClosedError: closed.
        """
        self._check_open()
        p = plan(index, self._state.length, f"{self._KIND} {self._path!r}")
        return self._take(p, out)

    def __iter__(self) -> Any:
        """Yield rows from the cursor to the end, advancing the cursor.

        Each row is new (a tensor, or a dict of tensors for a TensorDB) and does
        not alias the files.

        Raises:
            UnsupportedOperationError: open write-only.
            BlobClosedError: closed.
        """
        self._check_readable()
        return self._iter_rows()

    def _iter_rows(self) -> Any:
        """Each row is the one at the cursor when it is asked for. A reader's snapshot
        changes only by ``refresh()``, which replaces it, so rows are read a block at a
        time while the cursor stays where the last one left it. A writer's rows change
        under its iterator (write, truncate, extend, a rollback): one row at a time."""
        B = self.block_size
        while self._pos < self._state.length:
            start, state = self._pos, self._state
            stop = start + 1 if self._writable else min(state.length, (start // B + 1) * B)
            for i, row in enumerate(self._unbatch(self._take((start, stop)))):
                if self._pos != start + i or self._state is not state:
                    break  # moved (seek, read) or refreshed: read again at the cursor
                self._pos = start + i + 1
                yield row

    def __getitem__(self, index: Any) -> Any:
        """``x[i]``, ``x[a:b:c]``, ``x[list | tuple | 1-D int or bool tensor | ndarray]``.

        Reads this handle's snapshot without moving the cursor, in any mode.
        Always returns new tensors (a dict of them for a TensorDB) that do not
        alias the files.

        Raises:
            InvalidIndexError: an index is out of bounds.
            BlobTypeError: the index is of an unsupported type (str, float, bool, ...).
            InvalidArgumentError: a slice step is 0, or a tensor index is not 1-D.
            BlobClosedError: closed.
        """
        if type(index) is int and not self._closed:  # blob[i]: the hot path of random reads
            n = self._state.length
            if -n <= index < n:
                return self._take(index + n if index < 0 else index)
        self._check_open()
        return self._take(plan(index, self._state.length, f"{self._KIND} {self._path!r}"))

    def __getitems__(self, indices: Any) -> list[Any]:
        """The rows at ``indices`` for a DataLoader batch, gathered in one call.

        ``DataLoader`` calls it with the list of a batch's indices, then passes
        the result to its ``collate_fn``. Returns a list of the rows (as torch's
        protocol asks), which are views of one gathered batch (``(n, *shape)``,
        or a dict of them), held in the list's ``collated`` attribute:
        ``tensorblob.data.collate`` returns that batch without a copy,
        ``default_collate`` stacks the rows.

        Raises:
            InvalidIndexError: an index is out of bounds.
            BlobTypeError: ``indices`` is not a list, tuple, ndarray or 1-D tensor of ints.
            BlobClosedError: closed.
        """
        self._check_open()
        what = f"{self._KIND} {self._path!r}"
        return items(indices, self._state.length, what, self._take, self._unbatch)
