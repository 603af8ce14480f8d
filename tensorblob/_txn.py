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
   holds the lease. A journal grown past its bound is rotated or checkpointed
   when the next transaction begins (``_durability``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _durable, _locking, _records, _recovery
from ._blocks import BlockStore
from ._durability import _BEFORE, _COMMITTED, _FLUSH_FAILED, _UNKNOWN, DurablePoints, Marks
from ._fast import FastPaths
from ._journal import JournalWriter
from ._meta import Meta
from ._state import State, append_delta
from ._window import WriteWindow


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


class Engine(FastPaths, WriteWindow, DurablePoints):
    """Transactions over one writable blob. Not thread-safe: one thread per blob handle.

    The fast paths (``_fast``), the write window (``_window``) and the durable
    points (``_durability``) are its mixins; this module is the transaction
    protocol.
    """

    def __init__(
        self,
        root: str,
        meta: Meta,
        state: State,
        blocks: BlockStore,
        journal: JournalWriter,
        *,
        full: bool,
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
        self.txn: _Txn | None = None
        self.probe = _locking.ReaderProbe(root)
        self.broken: str | None = None  # why the handle was given up, if it was
        self.row_bytes = meta.row_bytes
        self.lanes = tuple((f.offset, f.row_bytes) for f in meta.fields)
        self.marks = Marks(
            last_closed=last_closed,
            base=base,
            base_length=state.length,
            rotatable=rotatable and not full,
        )
        self.w_fd = -1
        self.w_bid = -1
        self.w_bytes: np.ndarray | None = None
        self._clear_window()

    def _mark_open(self) -> None:
        self._append(_records.open_record(self.boot), "writing the open marker")
        self.marks.session_opened()

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
        m = self.marks
        if not m.opened:
            self._mark_open()
        if not m.marker_durable:
            with self._poison_on_error("syncing the open marker", _BEFORE):
                self.journal.sync()
            m.marker_durable = True

    # -- transaction lifecycle --------------------------------------------

    def begin(self) -> None:
        """Start a transaction; first rotate or checkpoint the journal if it is past its bound.

        The bound is dealt with here, before anything of the transaction is
        written, not at the end of the commit that passed it: if that work
        fails (a full disk), no transaction is open, nothing changed, and the
        error is raised as it is.
        """
        assert self.txn is None
        if self.full and not self.journal.can_log:
            # Under "full", a journal that can hold logged rows (version 5)
            # replaces an older one at the session's first transaction.
            self._checkpoint()
        elif self.past_bound():
            self._bound()
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
            self.marks.deleted = True

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
        record = _records.commit_record(
            st.length, k, changed, hwm_updates, freed, written, st.next_id
        )
        if t.blocks0 is None and not freed and st.length > t.length0:
            # Only appended? Then the short append record says the same (F6).
            prefix = final[: t.nslots0]
            delta = append_delta(prefix, st.hwm, t.length0, t.next0, st.length, B)
            if delta is not None and all(delta[key] == record[key] for key in delta):
                record = _records.append_record(st.length)
        if not self.marks.opened:
            self._mark_open()
        # Step 1: under "full", the rows reach the disk before the record does,
        # and the record carries their checksums (it is a durable marker).
        # The blocks holding rows that earlier commits logged in their records
        # (put_commit) are fsynced too: this record then says that every
        # committed row is in the block files (a block-durable marker, F9).
        if self.full:
            synced = sorted(self.marks.dirty.union(written))
            self.blocks.sync(synced, new_files=bool(kept_private))
            rows_after = dict(map(tuple, hwm_updates))
            live = [b for b in synced if b not in freed] if freed else synced
            sums = _recovery.new_sums(st, self.blocks, live, rows_after)
            _records.mark_durable(record, sums)
        # Step 2: the commit point (process death). If the append fails having
        # written nothing, or its bytes were cut off again, the transaction is
        # not committed and the caller rolls it back. If part of the frame may
        # be on disk, only the next open can tell: the handle is given up.
        self._append(record, "writing the commit record", self._keep(len(written)))
        # The transaction is committed: memory follows, whatever fails below.
        self.txn = None
        if self.full:  # Step 3: the commit point for power loss
            with self._poison_on_error("syncing the journal", _FLUSH_FAILED):
                self.journal.sync()
        with self._poison_on_error("completing a committed transaction", _COMMITTED):
            self._committed(t, record, dropped_private, written)

    def _committed(
        self, t: _Txn, record: dict[str, Any], dropped_private: set[int], written: list[int]
    ) -> None:
        st = self.state
        # Step 4 (after step 3, the journal's flush under "full"): memory
        # follows through the one transition (State.apply): the working
        # state goes back to where the transaction began, and the
        # record is applied to it, exactly as replay applies it. Then delete
        # the blocks made and dropped in the transaction.
        self._restore(t)
        st.apply(record, self.meta.block_size, "commit", fresh_from=t.next0)
        for bid in record.get("f", ()):
            self.blocks.forget(bid)
        for bid in dropped_private:
            self.blocks.delete(bid)
            self.marks.deleted = True
        append = record["t"] == _records.REC_APPEND
        new_files = bool(t.private - dropped_private)
        self.marks.committed(written, new_files, full=self.full, append=append)
        self._after_commit_window()
        # Step 5: deferred deletions (best effort). The journal's bound is
        # checked when the next transaction begins.
        if self.full and st.free:
            _recovery.reap(st, self.blocks, self.probe)

    # -- mutations (inside a transaction) --------------------------------

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

    def write(self, pos: int, rows: list[torch.Tensor]) -> None:
        """Write ``rows`` (one tensor per field, each contiguous, CPU, of the field's dtype,
        all of the same length) at row ``pos <= length``."""
        t, st = self.txn, self.state
        assert t is not None
        B = self.meta.block_size
        n = rows[0].shape[0]
        done = 0
        self.w_lo = self.w_hi = 0  # the window is set again below
        while done < n:
            slot, off = divmod(pos + done, B)
            t.low = min(t.low, slot)
            k = min(B - off, n - done)
            bid = self._slot_for_write(slot, off)
            t.touched.add(bid)
            self._set_window(slot, bid, bid in t.private)
            lanes = zip(rows, self.lanes, strict=True)
            self._store(off, tuple(r.data_ptr() + done * rb for r, (_, rb) in lanes), k)
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

    def append_blocks(self, sources: list[str], tail: list[torch.Tensor]) -> None:
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
        if tail[0].shape[0]:
            self.write(st.length, tail)

    def close(self) -> None:
        self._clear_window()
        self.journal.close()
        self.probe.close()
