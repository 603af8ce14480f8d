"""The write window: where rows go into a block now, and the disk space ahead of them.

A mixin of ``_txn.Engine``. The window is one block the engine is writing
rows into: rows ``[w_lo, w_hi)`` of the blob lie in block ``w_bid`` (slot
``w_slot``, whose first row is ``w_base``) and may be written in place now,
with no copy-on-write, allocation or journal work: they are past the block's
high-water mark, or the block is private to the open transaction. ``w_fd``
is the block file, open for ``pwrite``, so that a few rows written once
need no mapping; ``w_addr`` is the block's mapping (0 until needed), kept
alive by ``w_bytes`` even if the block cache evicts it. An empty range
(``w_lo == w_hi``) disables it. Before rows are stored into a page through
the mapping, the page gets its disk space (``_make_ready``), so that a full
disk is an error, not a SIGBUS.

A row is one row of each field (a blob has one field): every copy takes one
source address per field, and field ``f``'s rows go to its own stretch of
the block file, at ``offset + row * row_bytes`` (``lanes[f]``). The disk
space ahead of the rows is tracked per field.

Uses the engine's ``meta``, ``state``, ``blocks`` and ``lanes``.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import numpy as np

from . import _blocks, _durable

if TYPE_CHECKING:
    from ._blocks import BlockStore
    from ._meta import Meta
    from ._state import State

# Engine.write copies rows into a block by pwrite, unless the block is mapped
# already and the rows are at most PWRITE_BYTES. A pwrite fills the page
# cache in bulk, in folios as large as its 64 KiB pieces (_durable.store),
# without a page fault per page (docs/design.md, "How rows are copied").
PWRITE_BYTES = 1 << 18
# Once the fast paths have copied PREFILL_AFTER bytes into a block, they zero
# the block ahead of the rows with one pwrite before copying rows into it
# through the mapping: a first write to a page of a shared mapping costs a
# page fault, measured at 4-5 us per 3 KiB row on this machine, against
# about 1 us per row for zeros written in bulk followed by writes to pages
# already in the page cache. The stretch zeroed at once doubles from
# PREFILL_MIN to PREFILL_MAX, aligned to its size, so that a long run of
# rows gets 2 MiB folios (e2 179k -> 214k rows/s against a fixed 256 KiB).
# Sessions that copy less than PREFILL_AFTER zero nothing: their close would
# otherwise fsync more zeros than rows.
PREFILL_MIN = 1 << 18
PREFILL_MAX = 1 << 21
PREFILL_AFTER = PREFILL_MIN
# At a durable point, this many bytes of zeros are written past the last rows of
# the window's block (_allocate_ahead).
AHEAD_BYTES = 1 << 20


class WriteWindow:
    """The write window of an engine (see the module docstring)."""

    meta: Meta
    state: State
    blocks: BlockStore
    lanes: tuple[tuple[int, int], ...]  # (offset, row bytes) of each field
    w_fd: int
    w_bid: int
    w_bytes: np.ndarray | None

    def _clear_window(self) -> None:
        if self.w_fd >= 0:
            self.blocks.lent.pop(self.w_bid, None)
            os.close(self.w_fd)
        if self.w_bytes is not None:
            _blocks.advise(self.w_bytes, _blocks.MADV_NORMAL)
        self.w_fd = self.w_bid = -1
        self.w_lo = self.w_hi = self.w_base = self.w_slot = self.w_addr = 0
        self.w_bytes = None
        self.w_path = ""
        self.w_marked = False  # the open transaction has recorded its use of the window
        # Per field: its bytes below this offset have disk space
        self.w_ready = [off for off, _ in self.lanes]
        self.w_chunk = [PREFILL_MIN] * len(self.lanes)  # bytes the next prefill zeroes
        self.w_taken = [0] * len(self.lanes)  # bytes reserved before the first prefill
        self.w_direct = 0  # bytes the fast paths wrote by pwrite, before mapping the block
        # writeback was started for the bytes below this offset
        self.w_flushed = [off & ~4095 for off, _ in self.lanes]

    def _set_window(self, slot: int, bid: int, private: bool) -> None:
        if bid != self.w_bid:
            self._clear_window()
            self.w_path = self.blocks.path(bid)
            self.w_fd = os.open(self.w_path, os.O_RDWR | os.O_CLOEXEC)  # for pwrite
            self.w_bid = bid
            self.blocks.lent[bid] = self.w_fd
        B = self.meta.block_size
        self.w_slot, self.w_base = slot, slot * B
        self.w_lo = self.w_base + (0 if private else self.state.hwm[bid])
        self.w_hi = self.w_base + B
        self.w_marked = True

    def _window_at_end(self) -> bool:
        """Open the window on the last block if rows may be appended to it in place (its
        rows past the length were never exposed); False if that is not so."""
        st, B = self.state, self.meta.block_size
        slot, row = divmod(st.length, B)
        if not row or self.txn is not None:
            return False
        bid = st.blocks[slot]
        if st.hwm.get(bid) != row:
            return False
        self._set_window(slot, bid, private=False)
        self.w_marked = False
        return True

    def _after_commit_window(self) -> None:
        """A commit exposed rows: the window now starts at its block's new high-water mark."""
        st = self.state
        if (
            self.w_bid >= 0
            and self.w_slot < len(st.blocks)
            and st.blocks[self.w_slot] == self.w_bid
        ):
            self.w_lo = self.w_base + st.hwm[self.w_bid]
            self.w_hi = self.w_base + self.meta.block_size
            self.w_marked = False
        else:
            self._clear_window()

    def _map_window(self) -> int:
        # The uint8 array view of the mapping, not the tensor: torch asserts if
        # a garbage collection clears a tensor that another object shares.
        self.w_bytes = self.blocks.whole(self.w_bid)
        _blocks.advise(self.w_bytes, _blocks.MADV_RANDOM)  # until the window leaves the block
        self.w_addr = self.w_bytes.ctypes.data
        return self.w_addr

    def _make_ready(self, f: int, need: int) -> None:
        """Give field ``f`` of the window block disk space from the end of its rows to at
        least byte ``need`` of the file.

        Rows are stored into a block through a shared mapping, and a store
        into a page of a full disk that has no space yet is a SIGBUS, not an
        error. So the space is taken first, by writing zeros there with
        ``pwrite`` (``_durable.prefill``), which fails with ENOSPC on a full
        disk, before any row is stored. (``fallocate`` is not enough: ext4
        leaves delayed allocation when space runs low and converts the
        reserved extent at the page fault, which can need a new block.)

        The first PREFILL_AFTER bytes of a window are zeroed page by page, just
        ahead of the rows; past them, in stretches that double up to
        PREFILL_MAX, which also fills the page cache in bulk. Only bytes past
        the blob's length are touched, and the callers have checked that the
        window (which starts at or past the block's high-water mark) holds that
        length, so no row that this transaction or any reader can see changes;
        nor does another field's byte.
        """
        off, rb = self.lanes[f]
        done = off + (self.state.length - self.w_base) * rb
        if need <= done:  # rows written already: they have their space
            self.w_ready[f] = max(self.w_ready[f], done)
            return
        start = max(self.w_ready[f], done)
        end = off + self.meta.block_size * rb
        exact = min(-(-need // 4096) * 4096, end)  # the pages these rows need
        if self.w_taken[f] < PREFILL_AFTER:  # see PREFILL_AFTER
            stop = exact
            self.w_taken[f] += stop - start
        else:
            P = self.w_chunk[f]
            stop = min((max(need, start + P) + P - 1) // P * P, end)
            self.w_chunk[f] = min(2 * P, PREFILL_MAX)
        try:
            _durable.prefill(self.w_fd, start, stop - start, self.w_path)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or stop <= exact:
                raise
            # A nearly full disk: take only what these rows need, so that a
            # collector can use the last of the space.
            stop = exact
            _durable.prefill(self.w_fd, start, stop - start, self.w_path)
        self.w_ready[f] = stop
        if self.w_taken[f] >= PREFILL_AFTER:
            # The whole pages below the rows written so far will not be written
            # again by appends: start their writeback now, so that the next
            # durable point or checkpoint finds them on disk already.
            done &= ~4095
            flushed = self.w_flushed[f]
            if done > flushed:
                _durable.start_writeback(self.w_fd, flushed, done - flushed)
                self.w_flushed[f] = done

    def _allocate_ahead(self) -> None:
        """Write zeros ahead of the window's rows and start their writeback: at a durable
        point, between the fsync of the blocks and that of the journal.

        The next rows appended to the block (a collector's next session) then
        land on disk space that is allocated already, and the fsync that makes
        them durable writes data only: on this machine (ext4) a fdatasync of
        48 KiB written into a hole costs 140 us, into allocated space 105 us
        (docs/design.md, item 23). The allocation itself is made durable by
        the journal's flush that follows, which commits the filesystem's log
        anyway. Only bytes past every row any snapshot has seen (the
        high-water mark) are written; where a range is allocated already
        (``SEEK_HOLE``), nothing is. An error (a full disk) leaves it undone.
        """
        st, B = self.state, self.meta.block_size
        hwm = st.hwm.get(self.w_bid)
        if self.w_fd < 0 or hwm is None or not st.length - self.w_base <= hwm < B:
            return
        for off, rb in self.lanes:
            at, end = off + hwm * rb, off + B * rb
            ahead = AHEAD_BYTES * rb // self.meta.row_bytes
            try:
                hole = os.lseek(self.w_fd, at, os.SEEK_HOLE)
                if hole >= min(at + ahead // 2, end):  # room for the next rows already
                    continue
                start = max(hole, at)
                stop = min(start + ahead, end)
                _durable.prefill(self.w_fd, start, stop - start, self.w_path)
            except OSError:
                return
            _durable.start_writeback(self.w_fd, start, stop - start)

    def _copy_in(self, pos: int, srcs: tuple[int, ...], n: int) -> None:
        """Copy ``n`` rows from the addresses ``srcs`` (one per field) to row ``pos`` of the
        window's block."""
        row = pos - self.w_base
        if not self.w_addr and self.w_direct < PREFILL_AFTER:
            # A few rows so far (a collector's session): pwrite them, as _store
            # does, rather than map the block for them.
            self.w_direct += n * self.meta.row_bytes
            self._pwrite_rows(row, srcs, n)
            return
        if not self.w_addr:
            self._map_window()
        self._store_mapped(row, srcs, n)

    def _store(self, row: int, srcs: tuple[int, ...], k: int) -> None:
        """Write ``k`` rows from the addresses ``srcs`` (one per field) at row ``row`` of the
        window's block: through the mapping if it exists and the rows are few, else by
        ``pwrite``."""
        if self.w_addr and k * self.meta.row_bytes <= PWRITE_BYTES:  # see PWRITE_BYTES
            self._store_mapped(row, srcs, k)  # mapped already: no system call
        else:
            self._pwrite_rows(row, srcs, k)

    def _store_mapped(self, row: int, srcs: tuple[int, ...], n: int) -> None:
        ready, end, f = self.w_ready, row + n, 0
        for off, rb in self.lanes:
            if off + end * rb > ready[f]:
                self._make_ready(f, off + end * rb)
            f += 1  # noqa: SIM113 - enumerate() costs more in this loop
        _durable.store_rows(self.w_addr, srcs, self.lanes, row, n, self.w_path)

    def _pwrite_rows(self, row: int, srcs: tuple[int, ...], n: int) -> None:
        for (off, rb), src in zip(self.lanes, srcs, strict=True):
            _durable.store(self.w_fd, src, n * rb, off + row * rb, self.w_path)
