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

from ._args import as_int, index_tensor
from ._blocks import BlockStore
from ._meta import Field
from .errors import BlobTypeError, InvalidArgumentError, InvalidIndexError

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
    if isinstance(index, np.integer) or (
        isinstance(index, torch.Tensor)
        and index.dim() == 0
        and not index.dtype.is_floating_point
        and index.dtype != torch.bool
    ):
        index = int(index)
    if isinstance(index, int) and not isinstance(index, bool):
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise InvalidIndexError(f"index {index} is out of bounds for {what} of length {n}")
        return i
    if isinstance(index, slice):
        if index.step == 0:
            raise InvalidArgumentError("slice step cannot be zero")
        try:
            start, stop, step = index.indices(n)
        except TypeError:
            raise BlobTypeError(f"slice bounds must be ints or None, got {index!r}") from None
        if step == 1:
            return (start, max(start, stop))
        return np.arange(start, stop, step, dtype=np.int64)
    ia = index_tensor(index, n).numpy()
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


def take(store: BlockStore, slots: list[int], f: int, p: Plan) -> torch.Tensor:
    """Read plan ``p`` from field ``f`` of the snapshot whose slot list is ``slots``."""
    if isinstance(p, int):
        slot, off = divmod(p, store.meta.block_size)
        return store.get(slots[slot], f)[off].clone()
    if isinstance(p, tuple):
        return span(store, slots, f, p[0], p[1])
    return gather(store, slots, f, p)


def span(store: BlockStore, slots: list[int], f: int, start: int, stop: int) -> torch.Tensor:
    """Copy rows ``start:stop`` (within bounds) of field ``f`` into a new tensor."""
    fld = store.meta.fields[f]
    if stop <= start:
        return _empty(fld)
    # Copied as bytes with numpy: one plain memcpy per block, like a raw
    # np.memmap copy (torch's threaded copy stalls on a busy machine).
    B = store.meta.block_size
    s0, o0 = divmod(start, B)
    n = stop - start
    if n <= B - o0:
        out = store.get_bytes(slots[s0], f)[o0 : o0 + n].copy()
    else:
        out = np.empty((n, fld.row_bytes), dtype=np.uint8)
        pos = start
        while pos < stop:
            slot, off = divmod(pos, B)
            k = min(B - off, stop - pos)
            out[pos - start : pos - start + k] = store.get_bytes(slots[slot], f)[off : off + k]
            pos += k
    return torch.from_numpy(out).view(fld.dtype).reshape(n, *fld.shape)


def gather(store: BlockStore, slots: list[int], f: int, ia: np.ndarray) -> torch.Tensor:
    """Rows of field ``f`` at the positions ``ia`` (in bounds, any order, repeats allowed)."""
    fld = store.meta.fields[f]
    if not len(ia):
        return _empty(fld)
    # Rows are gathered as raw bytes, so any dtype works.
    B = store.meta.block_size
    lo, hi = int(ia.min()), int(ia.max())
    if lo // B == hi // B:  # one block: its mapping, indexed directly
        rows = torch.from_numpy(store.get_bytes(slots[lo // B], f))
        out = torch.index_select(rows, 0, torch.from_numpy(ia - (lo // B) * B))
    else:
        s = ia // B
        out = store.gather(slots, s, ia - s * B, f)
    return out.view(fld.dtype).reshape(len(ia), *fld.shape)


def _empty(fld: Field) -> torch.Tensor:
    return torch.empty((0, *fld.shape), dtype=fld.dtype)


class Reader:
    """Reading through the cursor and by index: what ``TensorBlob`` and ``TensorDB`` share.

    A mixin of a handle (``_state``, ``_pos``, ``_path``, ``block_size``,
    ``_check_open``, ``_check_readable``). The front end says what rows are:
    ``_take`` reads a plan (a tensor for a blob, a dict of tensors for a
    TensorDB) and ``_unbatch`` splits a batch of it into rows.
    """

    _state: Any
    _pos: int
    _path: str
    block_size: int
    _KIND = "blob"

    def _check_open(self) -> None: ...
    def _check_readable(self) -> None: ...

    def _take(self, p: Plan) -> Any:
        raise NotImplementedError

    def _unbatch(self, batch: Any) -> Any:
        raise NotImplementedError

    def read(self, size: int | None = None) -> Any:
        """Read up to ``size`` rows from the cursor (all the rest if None or negative).

        Returns new tensors ``(k, *shape)`` (a dict of them for a TensorDB) that
        do not alias the files; ``k == 0`` at the end. Advances the cursor by ``k``.

        Raises:
            UnsupportedOperationError: open write-only (``"w"``, ``"a"``).
            BlobTypeError: ``size`` is not an int or None.
            BlobClosedError: closed.
        """
        self._check_readable()
        n = self._state.length
        size = -1 if size is None else as_int(size, "read(size)")
        end = n if size < 0 else min(n, self._pos + size)
        out = self._take((self._pos, max(self._pos, end)))
        self._pos = max(self._pos, end)
        return out

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
        B = self.block_size
        while self._pos < self._state.length:
            start = self._pos
            chunk = self._take((start, min(self._state.length, (start // B + 1) * B)))
            for i, row in enumerate(self._unbatch(chunk)):
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
        p = plan(indices, self._state.length, f"{self._KIND} {self._path!r}")
        if not isinstance(p, np.ndarray):
            raise BlobTypeError(f"__getitems__ takes a sequence of indices, not {indices!r}")
        batch = self._take(p)
        rows = Rows(self._unbatch(batch))
        rows.collated, rows.n = batch, len(rows)
        return rows
