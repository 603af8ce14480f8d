"""The writer's engine: transactions, copy-on-write, the commit protocol, durable points.

One ``Engine`` per writable open blob. Its ``state`` is the working state: it
equals the last committed State between transactions and is changed in place
inside one, with enough remembered to roll back.

Copy-on-write rule: rows of a block below its high-water mark (rows some
committed snapshot has exposed) are never written in place. A write there
first copies the block to a fresh file, private to the transaction, and the
commit swaps it in. Appends past the mark go in place.

Commit, in order (docs/design.md, "The atomic commit"):

1. ``full`` only: fsync every block file the transaction wrote, then the
   ``blocks/`` directory if it created files.
2. Append one commit record to the journal in a single ``write``.
   **Commit point** for process death: once the frame is complete, the
   transaction is committed.
3. ``full`` only: fdatasync the journal. **Commit point** for power loss.
4. Apply the delta to the in-memory committed state; delete the blocks the
   transaction allocated but did not keep.
5. Delete superseded blocks, but only once their freeing is durable (at once
   under ``full``, at the next durable point under ``normal``) and no reader
   holds the lease. If the journal has grown past its bound, rotate it (an
   append-only session under ``normal``) or checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _blocks, _durable, _format, _journal, _locking, _recovery
from ._blocks import BlockStore
from ._journal import JournalWriter, sync_room
from ._meta import Meta
from ._state import State, append_delta
from .errors import BlobIOError, os_error

CHECKPOINT_BYTES = 64 * 1024  # journal size that triggers a checkpoint
# Engine.write copies rows into a block by pwrite, unless the block is mapped
# already and the rows are at most PWRITE_BYTES. A pwrite fills the page
# cache in bulk, in folios as large as its 256 KiB pieces (_durable.store),
# without a page fault per page (docs/design.md, "How rows are copied").
PWRITE_BYTES = 1 << 18
CHECKPOINT_RECORDS = 2048  # journal records that trigger one: bounds replay time at open
# A journal past its bound is rotated instead of checkpointed when the
# session has only appended since the manifest, under sync="normal", and made
# none of it durable: a new journal over the same manifest carries the
# session's rows in one append record (docs/design.md, item 4). That needs no
# block fsync and no manifest. Once the rows since the manifest pass
# ROTATE_BYTES, the bound checkpoints, which makes them durable: a power cut
# never loses more than that (or what the last durable point left).
ROTATE_BYTES = 64 << 20
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
# close() checkpoints, rather than appending a close marker, past this many
# records: the next open then replays nothing. Collectors that open, append
# and close all day would otherwise make every open replay their sessions.
CLOSE_CHECKPOINT_RECORDS = 48
# ... and past this many blocks written since the last durable point: the
# checkpoint (a few fsyncs, nothing next to writing that many blocks) spares
# every later open replaying them and their checksums.
CLOSE_CHECKPOINT_BLOCKS = 16


# What a BlobIOError says is durable, by the step that failed (see _give_up).
_UNKNOWN = (
    "Whether this transaction committed is decided when the blob is next opened; every "
    "transaction before it is committed."
)
_BEFORE = "This transaction is not committed; every transaction before it is."
_COMMITTED = (
    "This transaction is committed (it survives the death of this process, and power loss "
    "as sync= says)."
)
_COMMITTED_ALL = (
    "Every transaction so far is committed (each survives the death of this process; since "
    "the last flush() or close(), not necessarily power loss)."
)
_DURABLE_POINT = "durable point"  # replaced by one of the two below
_DURABLE_FULL = (
    "Every committed transaction was durable already (sync='full'); only the close "
    "marker may be missing."
)
_DURABLE_NORMAL = (
    "Every committed transaction survives the death of this process; those since the last "
    "flush() or close() may not survive power loss."
)


@dataclass
class _Txn:
    length0: int
    nslots0: int
    next0: int  # the first block id this transaction may allocate
    blocks0: list[int] | None = None  # copy of the slot list, made on first in-place change
    changed: set[int] = field(default_factory=set)  # slots assigned a different block
    private: set[int] = field(default_factory=set)  # blocks created by this transaction
    touched: set[int] = field(default_factory=set)  # blocks written by this transaction
    low: int = 1 << 62  # lowest slot written, swapped or cut: nothing below it changed


class Engine:
    """Transactions over one writable blob. Not thread-safe: one thread per blob handle."""

    def __init__(
        self,
        root: str,
        meta: Meta,
        state: State,
        blocks: BlockStore,
        journal: JournalWriter,
        *,
        full: bool,
        dirty: set[int],
        last_closed: bool,
        base: int,
        rotatable: bool,
    ) -> None:
        self.root = root
        self.meta = meta
        self.state = state
        self.blocks = blocks
        self.journal = journal
        self.full = full
        self.boot = _durable.boot_id()
        self.dirty = dirty  # blocks written since the last durable point
        self.new_files = bool(dirty)  # block files created since the last durable point
        self.since_durable = 0  # commits since the last durable point
        self.last_closed = last_closed  # the journal ends with a close marker
        self.txn: _Txn | None = None
        self.probe = _locking.ReaderProbe(root)
        self.broken: str | None = None  # why the handle was given up, if it was
        self.deleted = False  # block files deleted since blocks/ was last fsynced
        self.row_bytes = meta.row_bytes
        # The manifest's generation and length. The journal may be rotated
        # while every commit since the manifest is an append and none of them
        # is durable: then the manifest is the last durable state, and one
        # append record says what the journal held (see _rotate).
        self.base = base
        self.base_length = state.length
        self.rotatable = rotatable and not full
        # An open marker starts the session's records in the journal and gives
        # them its boot id. It is written before the session's first record,
        # and made durable before its first block file is created, so that a
        # crash of this session is visible to the next open even if it dies
        # before its first commit (that open must then delete the files).
        self.opened = False
        self.marker_durable = False
        # The write window: rows [w_lo, w_hi) of the blob lie in block w_bid
        # (slot w_slot, whose first row is w_base) and may be written in place
        # now, with no copy-on-write, allocation or journal work: they are past
        # the block's high-water mark, or the block is private to the open
        # transaction. w_fd is the block file, open for pwrite, so that a few
        # rows written once need no mapping; w_addr is the block's mapping
        # (0 until the fast path first needs it), kept alive by w_bytes even
        # if the block cache evicts it. An empty range (w_lo == w_hi) disables it.
        self.w_fd = -1
        self.w_bid = -1
        self.w_bytes: np.ndarray | None = None
        self._clear_window()

    def _clear_window(self) -> None:
        if self.w_fd >= 0:
            os.close(self.w_fd)
        if self.w_bytes is not None:
            _blocks.advise(self.w_bytes, _blocks.MADV_NORMAL)
        self.w_fd = self.w_bid = -1
        self.w_lo = self.w_hi = self.w_base = self.w_slot = self.w_addr = 0
        self.w_bytes = None
        self.w_path = ""
        self.w_marked = False  # the open transaction has recorded its use of the window
        self.w_ready = 0  # bytes of the block below this offset have disk space
        self.w_chunk = PREFILL_MIN  # bytes the next prefill zeroes
        self.w_taken = 0  # bytes reserved before the first prefill
        self.w_flushed = 0  # writeback was started for the bytes below this offset

    def _set_window(self, slot: int, bid: int, private: bool) -> None:
        if bid != self.w_bid:
            self._clear_window()
            self.w_path = self.blocks.path(bid)
            self.w_fd = _durable.open_block(self.w_path)
            self.w_bid = bid
        B = self.meta.block_size
        self.w_slot, self.w_base = slot, slot * B
        self.w_lo = self.w_base + (0 if private else self.state.hwm[bid])
        self.w_hi = self.w_base + B
        self.w_marked = True

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

    def _mark_open(self) -> None:
        self._append({"t": _format.REC_OPEN, "b": self.boot}, "writing the open marker")
        self.opened = True
        self.last_closed = False

    def _append(self, record: dict[str, Any], what: str, keep: int = 0) -> None:
        """Append ``record`` to the journal. Raises the OSError as it is if nothing was
        written (the record is not there: a full disk, say); gives the handle up if
        the journal may hold part of it."""
        try:
            self.journal.append(record, keep)
        except BaseException as exc:
            if self.journal.broken:
                raise self._give_up(what, exc, _UNKNOWN) from exc
            raise

    def _before_new_file(self) -> None:
        if not self.opened:
            self._mark_open()
        if not self.marker_durable:
            with self._poison_on_error("syncing the open marker", _BEFORE):
                self.journal.sync()
            self.marker_durable = True

    def _map_window(self) -> int:
        # The uint8 array view of the mapping, not the tensor: torch asserts if
        # a garbage collection clears a tensor that another object shares.
        self.w_bytes = self.blocks.get_bytes(self.w_bid)
        _blocks.advise(self.w_bytes, _blocks.MADV_RANDOM)  # until the window leaves the block
        self.w_addr = self.w_bytes.ctypes.data
        return self.w_addr

    def _make_ready(self, need: int) -> None:
        """Give the window block disk space from the end of its rows to at least byte ``need``.

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
        length, so no row that this transaction or any reader can see changes.
        """
        done = (self.state.length - self.w_base) * self.row_bytes
        if need <= done:  # rows written already: they have their space
            self.w_ready = max(self.w_ready, done)
            return
        start = max(self.w_ready, done)
        end = self.meta.block_size * self.row_bytes
        exact = min(-(-need // 4096) * 4096, end)  # the pages these rows need
        if self.w_taken < PREFILL_AFTER:  # see PREFILL_AFTER
            stop = exact
            self.w_taken += stop - start
        else:
            P = self.w_chunk
            stop = min((max(need, start + P) + P - 1) // P * P, end)
            self.w_chunk = min(2 * P, PREFILL_MAX)
        try:
            _durable.prefill(self.w_fd, start, stop - start, self.w_path)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or stop <= exact:
                raise
            # A nearly full disk: take only what these rows need, so that a
            # collector can use the last of the space.
            stop = exact
            _durable.prefill(self.w_fd, start, stop - start, self.w_path)
        self.w_ready = stop
        if self.w_taken >= PREFILL_AFTER:
            # The whole pages below the rows written so far will not be written
            # again by appends: start their writeback now, so that the next
            # durable point or checkpoint finds them on disk already.
            done &= ~4095
            if done > self.w_flushed:
                _durable.start_writeback(self.w_fd, self.w_flushed, done - self.w_flushed)
                self.w_flushed = done

    def _copy_in(self, pos: int, src: int, n: int) -> None:
        """Copy ``n`` rows from address ``src`` to row ``pos`` of the window's block."""
        rb = self.row_bytes
        off = (pos - self.w_base) * rb
        if off + n * rb > self.w_ready:
            self._make_ready(off + n * rb)
        addr = self.w_addr or self._map_window()
        _durable.store_mapped(addr + off, src, n * rb, off, self.w_path)

    # -- the fast paths ---------------------------------------------------

    def put(self, pos: int, src: int, n: int) -> bool:
        """Copy ``n`` rows from address ``src`` to row ``pos``, inside the open transaction.

        Only if they fall in the write window; returns False (and does
        nothing) otherwise, and the caller takes the general path.
        """
        if not (self.w_lo <= pos and pos + n <= self.w_hi):
            return False
        st = self.state
        if pos > st.length:
            return False
        self._copy_in(pos, src, n)
        if pos + n > st.length:  # noqa: PLR1730 - an if is cheaper than max() here
            st.length = pos + n
        if not self.w_marked:
            t = self.txn
            assert t is not None
            t.touched.add(self.w_bid)
            t.low = min(t.low, self.w_slot)
            self.w_marked = True
        return True

    def put_commit(self, src: int, n: int) -> bool:
        """Append ``n`` rows from address ``src`` as one committed transaction.

        The common case of a collector: the rows fit the last block past its
        high-water mark, so the transaction is the rows plus one append record
        (``sync="normal"``). Returns False, having done nothing, when that
        does not apply; the caller then takes the general path.
        """
        st = self.state
        pos = st.length
        if not (self.w_lo <= pos and pos + n <= self.w_hi) or self.full or not self.opened:
            return False
        j = self.journal
        if j.size > CHECKPOINT_BYTES or j.seq > CHECKPOINT_RECORDS:
            return False  # the general path rotates or checkpoints first (see begin)
        self._copy_in(pos, src, n)
        end = pos + n
        try:
            j.append_rows(end, sync_room(len(self.dirty) + 1))
        except BaseException as exc:
            if j.broken:
                raise self._give_up("writing the commit record", exc, _UNKNOWN) from exc
            raise  # nothing was written: not committed, and nothing to undo
        # Committed: memory follows through the one transition (State.apply,
        # whose append branch this is), as in _committed.
        st.apply_append(end, j.seq, self.meta.block_size, "commit")
        self.dirty.add(self.w_bid)
        self.since_durable += 1
        self.last_closed = False
        self.w_lo = end
        return True

    # -- transaction lifecycle --------------------------------------------

    def begin(self) -> None:
        """Start a transaction; first rotate or checkpoint the journal if it is past its bound.

        The bound is dealt with here, before anything of the transaction is
        written, not at the end of the commit that passed it: if that work
        fails (a full disk), no transaction is open, nothing changed, and the
        error is raised as it is.
        """
        assert self.txn is None
        j = self.journal
        if j.size > CHECKPOINT_BYTES or j.seq > CHECKPOINT_RECORDS:
            self._past_bound()
        self.txn = _Txn(self.state.length, len(self.state.blocks), self.state.next_id)
        self.w_marked = False

    def rollback(self) -> None:
        """Undo the open transaction: restore the slot list and length, delete its blocks."""
        t = self.txn
        assert t is not None
        self.txn = None
        self._clear_window()
        self._restore(t)
        for bid in t.private:
            self.blocks.delete(bid)
            self.deleted = True

    def _restore(self, t: _Txn) -> None:
        """Put the working state's slots, length and next block id back where ``t`` began.

        Ids are reused: an append record's new blocks take the ids that follow
        the last commit's (a stale file of a rolled-back block is replaced when
        its id is allocated again).
        """
        st = self.state
        if t.blocks0 is not None:
            st.blocks = t.blocks0
        else:
            del st.blocks[t.nslots0 :]
        st.length = t.length0
        st.next_id = t.next0

    def commit(self) -> None:
        """Commit the open transaction (the numbered steps in the module docstring)."""
        t, st = self.txn, self.state
        assert t is not None
        if st.length == t.length0 and not t.changed and not t.touched:
            self.txn = None
            return
        B = self.meta.block_size
        final = st.blocks
        k = len(final)
        # Every block this transaction wrote or placed sits at slot >= t.low,
        # so the survivors are found without scanning the whole slot list.
        alive = set(final[t.low :]) if t.low < k else set()
        kept_private = t.private & alive
        dropped_private = t.private - kept_private
        # Slots whose exposed row count may grow: those past the old length, and swapped ones.
        first = min(t.length0, st.length) // B
        hwm_updates: list[list[int]] = []
        slots = range(first, k)
        if t.changed:
            slots = sorted(set(slots) | {s for s in t.changed if s < k})
        for slot in slots:
            bid = final[slot]
            visible = min(B, st.length - slot * B)
            if bid in kept_private or st.hwm[bid] < visible:
                hwm_updates.append([bid, visible])
        freed: list[int] = []
        if t.blocks0 is not None:
            keep = set(final)
            freed = [b for b in t.blocks0 if b not in keep]
        written = sorted(t.touched & alive)
        changed = [[s, final[s]] for s in sorted(t.changed) if s < k]
        record = _format.commit_record(
            st.length, k, changed, hwm_updates, freed, written, st.next_id
        )
        if t.blocks0 is None and not freed and st.length > t.length0:
            # Only appended? Then the short append record says the same (F6).
            prefix = final[: t.nslots0]
            delta = append_delta(prefix, st.hwm, t.length0, t.next0, st.length, B)
            if delta is not None and all(delta[key] == record[key] for key in delta):
                record = _format.append_record(st.length)
        if not self.opened:
            self._mark_open()
        # Step 1: under "full", the rows reach the disk before the record does,
        # and the record carries their checksums (it is a durable marker).
        if self.full:
            self.blocks.sync(written, new_files=bool(kept_private))
            rows_after = dict(map(tuple, hwm_updates))
            sums = _recovery.new_sums(st, self.blocks, written, rows_after)
            _format.mark_durable(record, sums)
        # Step 2: the commit point (process death). If the append fails having
        # written nothing, or its bytes were cut off again, the transaction is
        # not committed and the caller rolls it back. If part of the frame may
        # be on disk, only the next open can tell: the handle is given up.
        keep = sync_room(len(self.dirty) + len(written))
        self._append(record, "writing the commit record", keep)
        # The transaction is committed: memory follows, whatever fails below.
        self.txn = None
        with self._poison_on_error("completing a committed transaction", _COMMITTED):
            self._committed(t, record, dropped_private, written)

    def _committed(
        self, t: _Txn, record: dict[str, Any], dropped_private: set[int], written: list[int]
    ) -> None:
        st = self.state
        # Step 3: the commit point (power loss), "full" only.
        if self.full:
            self.journal.sync()
        # Step 4: memory follows through the one transition (State.apply): the
        # working state goes back to where the transaction began, and the
        # record is applied to it, exactly as replay applies it. Then delete
        # the blocks made and dropped in the transaction.
        self._restore(t)
        st.apply(record, self.meta.block_size, "commit", fresh_from=t.next0)
        for bid in record.get("f", ()):
            self.blocks.forget(bid)
        for bid in dropped_private:
            self.blocks.delete(bid)
            self.deleted = True
        self.last_closed = False
        if record["t"] != _format.REC_APPEND:
            self.rotatable = False
        self._after_commit_window()
        if self.full:
            self.since_durable = 0
        else:
            self.dirty.update(written)
            self.new_files |= bool(t.private - dropped_private)
            self.since_durable += 1
        # Step 5: deferred deletions (best effort). The journal's bound is
        # checked when the next transaction begins.
        if self.full and st.free:
            _recovery.reap(st, self.blocks, self.probe)

    # -- mutations (inside a transaction) --------------------------------

    @contextlib.contextmanager
    def _poison_on_error(self, what: str, status: str) -> Iterator[None]:
        """Give the handle up if a step at or after a commit point fails.

        After such a failure memory and disk may disagree (a torn frame, an
        fsync that failed, a checkpoint half done). Writing on would build on
        that, so the engine refuses all further work; reopening the blob runs
        recovery, which resolves the last transaction from what is on disk.
        ``status`` says what is and is not durable at that point.
        """
        try:
            yield
        except BaseException as exc:
            raise self._give_up(what, exc, status) from exc

    def _give_up(self, what: str, exc: BaseException, status: str) -> BlobIOError:
        """Mark the handle broken (see _poison_on_error); return the error to raise."""
        self.txn = None  # never roll back: the commit may be on disk
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        self.broken = f"{what} failed ({why})"
        if status == _DURABLE_POINT:
            status = _DURABLE_FULL if self.full else _DURABLE_NORMAL
        return os_error(
            BlobIOError,
            exc.errno if isinstance(exc, OSError) else None,
            f"blob {self.root!r}: {self.broken}. {status} The handle is closed; reopen the "
            "blob (or run `tensorblob recover`): the open recovers, losing nothing committed "
            "that reached the disk",
            getattr(exc, "filename", None),
        )

    def _save_slots(self) -> None:
        """Remember the committed slot list before the first change below the old end."""
        t = self.txn
        assert t is not None
        if t.blocks0 is None:
            t.blocks0 = self.state.blocks[: t.nslots0]

    def _alloc_id(self) -> int:
        bid = self.state.next_id
        self.state.next_id += 1
        return bid

    def _slot_for_write(self, slot: int, off: int) -> int:
        """Return a block id for ``slot`` that may be written from row ``off`` on."""
        t, st = self.txn, self.state
        assert t is not None
        if slot == len(st.blocks):
            bid = self._alloc_id()
            t.private.add(bid)  # before the file exists: a failed allocate is cleaned up
            self._before_new_file()
            self.blocks.allocate(bid)
            st.blocks.append(bid)
            t.changed.add(slot)
            return bid
        bid = st.blocks[slot]
        if bid in t.private or off >= st.hwm[bid]:
            return bid
        self.blocks.check_file(bid)  # damage is reported before anything is written
        new = self._alloc_id()
        t.private.add(new)
        self._before_new_file()
        self.blocks.copy(bid, new)
        self._save_slots()
        st.blocks[slot] = new
        t.changed.add(slot)
        return new

    def write(self, pos: int, rows: torch.Tensor) -> None:
        """Write ``rows`` (contiguous, CPU, right dtype) at row ``pos <= length``."""
        t, st = self.txn, self.state
        assert t is not None
        B, rb = self.meta.block_size, self.row_bytes
        n = rows.shape[0]
        done = 0
        self.w_lo = self.w_hi = 0  # the window is set again below
        while done < n:
            slot, off = divmod(pos + done, B)
            t.low = min(t.low, slot)
            k = min(B - off, n - done)
            bid = self._slot_for_write(slot, off)
            t.touched.add(bid)
            src = rows if k == n else rows[done : done + k]
            self._set_window(slot, bid, bid in t.private)
            if self.w_addr and k * rb <= PWRITE_BYTES:  # mapped already: no system call
                if (off + k) * rb > self.w_ready:
                    self._make_ready((off + k) * rb)
                _durable.store_mapped(
                    self.w_addr + off * rb, src.data_ptr(), k * rb, off * rb, self.w_path
                )
            else:  # see PWRITE_BYTES
                _durable.store(self.w_fd, src.data_ptr(), k * rb, off * rb, self.w_path)
            done += k
            st.length = max(st.length, pos + done)

    def truncate(self, length: int) -> None:
        t, st = self.txn, self.state
        assert t is not None
        k = -(-length // self.meta.block_size)
        t.low = min(t.low, k)
        self._clear_window()
        if k < len(st.blocks):
            if k < t.nslots0:
                self._save_slots()
            del st.blocks[k:]
        st.length = min(st.length, length)

    def append_blocks(self, sources: list[str], tail: torch.Tensor) -> None:
        """Append whole foreign block files, then ``tail`` rows (extend without order).

        The blob's own partial last block, if any, moves after the copied
        blocks as a whole file (its rows keep their place inside the file),
        so only the other blob's full blocks are copied.
        """
        t, st = self.txn, self.state
        assert t is not None
        B = self.meta.block_size
        full_slots, rem = divmod(st.length, B)
        t.low = min(t.low, full_slots)
        self._clear_window()
        tail_bid = None
        if rem:
            if full_slots < t.nslots0:
                self._save_slots()
            tail_bid = st.blocks.pop()
        for src in sources:  # damage is reported before anything is written
            self.blocks.check_path(src)
        for src in sources:
            bid = self._alloc_id()
            t.private.add(bid)
            self._before_new_file()
            self.blocks.copy_foreign(src, bid)
            t.touched.add(bid)
            t.changed.add(len(st.blocks))
            st.blocks.append(bid)
        st.length = len(st.blocks) * B
        if tail_bid is not None:
            t.changed.add(len(st.blocks))
            st.blocks.append(tail_bid)
            st.length += rem
        if tail.shape[0]:
            self.write(st.length, tail)

    # -- durable points ---------------------------------------------------

    def durable_point(self, *, closing: bool) -> None:
        """Make every commit so far survive power loss (``flush()`` / ``close()``).

        Checkpoints if the journal is long; if that fails for lack of disk
        space (before its commit point), falls back to a sync record, for
        which the journal always keeps room: a full disk does not stop a
        durable point.
        """
        assert self.txn is None
        if self.since_durable == 0 and not self.dirty and (self.last_closed or not closing):
            if self.state.free:  # everything is durable: blocks freed earlier may go now
                _recovery.reap(self.state, self.blocks, self.probe)
            return
        j = self.journal
        # Not while the interpreter shuts down (a close from __del__): torch
        # may be half torn down by then.
        long = j.size > CHECKPOINT_BYTES or (
            closing
            and (j.seq > CLOSE_CHECKPOINT_RECORDS or len(self.dirty) > CLOSE_CHECKPOINT_BLOCKS)
        )
        checkpointed = (
            long and not sys.is_finalizing() and self._checkpoint(closing=closing, optional=True)
        )
        if checkpointed and closing:
            return  # everything is durable, and the new journal says "closed"
        with self._poison_on_error("making commits durable", _DURABLE_POINT):
            st, dirty = self.state, self.dirty
            new_files = self.new_files or self.deleted
            sums = _recovery.sync_and_sum(st, self.blocks, dirty, new_files=new_files, sums=dirty)
            record = _format.sync_record(closing, sums)
            self.journal.append(record)
            self.journal.sync()
            st.apply(record, self.meta.block_size, "sync")
            self.deleted = False
            self.dirty.clear()
            self.new_files = False
            self.since_durable = 0
            self.last_closed = closing
            if st.length != self.base_length:  # the manifest is no longer the durable state
                self.rotatable = False
        _recovery.reap(st, self.blocks, self.probe)

    def _past_bound(self) -> None:
        """The journal passed a bound: rotate it, or checkpoint (before a transaction)."""
        grown = (self.state.length - self.base_length) * self.row_bytes
        if self.rotatable and 0 < grown <= ROTATE_BYTES:
            self._rotate()
        else:
            self._checkpoint()

    def _rotate(self) -> None:
        """Start a new journal over the same manifest, carrying this session's rows.

        Only while ``rotatable``: every commit since the manifest appended rows
        in place and none is durable, so the manifest is the last durable state
        and the journal says no more than "the blob grew to ``length`` rows,
        in this boot". The new journal says the same in two records: an open
        marker with this session's boot id, and one append record to the
        current length, marked as carried (F6, F7). Under the boot rule (F9)
        a power cut drops both, as it would have dropped what they replace.
        Nothing is fsynced but the new journal: the rows stay undurable (and
        without checksums) until the next durable point or checkpoint, as
        they were. A full disk fails the staging of the new journal, before
        anything changed.
        """
        assert self.txn is None
        st = self.state
        assert st.length > self.base_length  # there are rows to carry (see _past_bound)
        salt = _journal.stage_rotation(
            self.root, st.uuid, st.gen + 1, base=self.base, boot=self.boot, length=st.length
        )
        with self._poison_on_error("rotating the journal", _COMMITTED_ALL):
            _durable.install(self.journal.path)  # the rotation's commit point
            st.gen += 1
            st.seq = _locking.snapshot_seq(st.gen, 2)  # the carried record's
            self.journal.close()
            self.journal = JournalWriter(self.root, salt, 2)
        self.opened = self.marker_durable = True  # the new journal's open marker is synced
        self.last_closed = False

    def _checkpoint(self, *, closing: bool = False, optional: bool = False) -> bool:
        """Make all blocks durable, write a new manifest and start an empty journal.

        The manifest and journal are staged first: if that fails (a full
        disk), nothing changed and the error is raised, or, if ``optional``,
        False is returned. Returns True once the checkpoint is in place.
        """
        assert self.txn is None
        st = self.state
        with self._poison_on_error("checkpointing", _DURABLE_POINT):
            new_files = self.new_files or self.deleted
            sums = _recovery.sync_and_sum(
                st, self.blocks, self.dirty, new_files=new_files, sums=st.blocks
            )
            self.deleted = self.new_files = False
        try:
            gen, salt = _recovery.stage_checkpoint(
                self.root, st, self.meta.block_size, closed=closing, sums=sums
            )
        except OSError:
            if optional:
                return False
            raise
        with self._poison_on_error("checkpointing", _DURABLE_POINT):
            _recovery.install_checkpoint(self.root, st, gen)
            st.apply_sums(sums, "checkpoint")
            self.journal.close()
            self.journal = JournalWriter(self.root, salt, int(closing))
        self.dirty.clear()
        self.since_durable = 0
        self.opened = False  # the next record starts with a new open marker
        self.marker_durable = False
        self.last_closed = closing
        self.base, self.base_length = st.gen, st.length
        self.rotatable = not self.full
        _recovery.reap(st, self.blocks, self.probe)
        return True

    def close(self) -> None:
        self._clear_window()
        self.journal.close()
        self.probe.close()
