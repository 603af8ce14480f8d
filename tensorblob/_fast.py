"""The fast paths of the engine: rows into the write window with no transaction's bookkeeping.

A mixin of ``_txn.Engine``. ``put`` copies rows into the window inside an
open transaction; ``put_commit`` appends rows as a whole committed
transaction, the collector's case: the rows, then one append record. Under
``sync="full"`` that record carries the rows (logged rows, F6 ``r``), and
the journal's flush is the only one (docs/design.md, item 21).

Uses the engine's ``state``, ``marks``, ``journal``, ``full``, ``txn``,
``row_bytes``, ``lanes``, the window and the durable points.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from . import _records
from ._durability import _FLUSH_FAILED, _UNKNOWN
from ._journal import sync_room

if TYPE_CHECKING:
    from ._durability import Marks
    from ._journal import JournalWriter
    from ._meta import Meta
    from ._state import State

# Under sync="full", a commit that appends at most LOG_ROW_BYTES of rows into
# the window's block carries them in its journal record (F6 ``r``), written in
# place over the journal's zero padding, and only the journal is flushed: one
# device flush per commit instead of two. The block is fsynced at the next
# durable point, checkpoint or general commit, and at the latest once
# LOG_BUDGET bytes were logged since the last one, so that recovery after a
# power cut rewrites at most that much (docs/design.md, item 21).
LOG_ROW_BYTES = 1 << 16
LOG_BUDGET = 1 << 20


class FastPaths:
    """The fast paths of an engine (see the module docstring)."""

    meta: Meta
    state: State
    marks: Marks
    journal: JournalWriter
    full: bool
    row_bytes: int
    lanes: tuple[tuple[int, int], ...]

    def fast_write(self, srcs: tuple[int, ...], n: int, pos: int | None, *, commit: bool) -> int:
        """Write ``n`` rows from the addresses ``srcs`` (one per field) at row ``pos`` (None:
        at the end), the fast way; return the row after them, or -1 having done nothing.

        The fast way applies when the rows fall in the write window. With
        ``commit`` (no transaction is open) they append at the end as one
        committed transaction (``put_commit``); otherwise they join the open
        transaction (``put``). On -1 the caller takes the general path.
        """
        if pos is None:
            pos = self.state.length
        if commit:
            ok = pos == self.state.length and self.put_commit(srcs, n)
        else:
            ok = self.put(pos, srcs, n)
        return pos + n if ok else -1

    def put(self, pos: int, srcs: tuple[int, ...], n: int) -> bool:
        """Copy ``n`` rows from the addresses ``srcs`` to row ``pos``, inside the open
        transaction.

        Only if they fall in the write window; returns False (and does
        nothing) otherwise, and the caller takes the general path.
        """
        if not (self.w_lo <= pos and pos + n <= self.w_hi):
            return False
        st = self.state
        if pos > st.length:
            return False
        self._copy_in(pos, srcs, n)
        if pos + n > st.length:  # noqa: PLR1730 - an if is cheaper than max() here
            st.length = pos + n
        if not self.w_marked:
            t = self.txn
            assert t is not None
            t.touched.add(self.w_bid)
            t.low = min(t.low, self.w_slot)
            self.w_marked = True
        return True

    def put_commit(self, srcs: tuple[int, ...], n: int) -> bool:
        """Append ``n`` rows from the addresses ``srcs`` as one committed transaction.

        The common case of a collector: the rows fit the last block past its
        high-water mark, so the transaction is the rows plus one append record
        (``sync="normal"``). Returns False, having done nothing, when that
        does not apply; the caller then takes the general path.
        """
        st = self.state
        pos = st.length
        m = self.marks
        if not (self.w_lo <= pos and pos + n <= self.w_hi) and (
            not self._window_at_end() or pos + n > self.w_hi  # it starts at the length
        ):
            return False
        nbytes = n * self.row_bytes
        if self.full and (
            nbytes > LOG_ROW_BYTES or m.logged + nbytes > LOG_BUDGET or not self.journal.can_log
        ):
            return False  # the general path: the blocks are fsynced before the record
        if self.past_bound():
            return False  # the general path rotates or checkpoints first (see begin)
        j = self.journal
        if not m.opened:  # the session's first commit: its open marker first
            self._mark_open()
        self._copy_in(pos, srcs, n)
        end = pos + n
        try:
            if self.full:  # the rows travel in the record too (F6 ``r``): one flush
                rec = _records.logged_append(end, self._row_image(srcs, n))
                j.append(rec, self._keep(1), pad=True)
            else:
                j.append_rows(end, self._keep(1))
        except BaseException as exc:
            if j.broken:
                raise self._give_up("writing the commit record", exc, _UNKNOWN) from exc
            raise  # nothing was written: not committed, and nothing to undo
        if self.full:  # the commit point for power loss
            with self._poison_on_error("syncing the journal", _FLUSH_FAILED):
                j.sync()
            m.logged += nbytes
        # Committed: memory follows through the one transition (State.apply,
        # whose append branch this is), as in _committed.
        st.apply_append(end, j.seq, self.meta.block_size, "commit")
        m.dirty.add(self.w_bid)
        m.since += 1
        m.last_closed = False
        self.w_lo = end
        return True

    def _keep(self, more: int) -> int:
        """Journal room to keep after a commit record: a sync record's for the dirty blocks
        and ``more``."""
        return sync_room(len(self.marks.dirty) + more)

    def _row_image(self, srcs: tuple[int, ...], n: int) -> bytes:
        """The bytes of ``n`` rows at the addresses ``srcs``, field after field (F6 ``r``)."""
        if len(srcs) == 1:
            return ctypes.string_at(srcs[0], n * self.lanes[0][1])
        return b"".join(
            ctypes.string_at(a, n * rb) for a, (_, rb) in zip(srcs, self.lanes, strict=True)
        )
