"""Durable points, checkpoints and journal rotation: when commits survive power loss (G2).

A mixin of ``_txn.Engine``. Under ``sync="normal"`` a commit does not fsync;
``flush()`` and ``close()`` are durable points (``durable_point``): the
blocks written since the last one are fsynced, and a sync record with their
checksums is appended and fdatasynced. Past its bound, the journal is
rotated (an append-only session under ``"normal"``) or checkpointed, before
the next transaction begins (``_bound``). ``Marks`` holds what the engine
must remember between durable points, in one object. When a step at or after
a commit point fails, ``_give_up`` closes the handle, and its error says
what is and is not durable.

Uses the engine's ``root``, ``meta``, ``state``, ``blocks``, ``journal``,
``full``, ``boot``, ``probe``, ``txn``, ``broken``, ``row_bytes`` and
``marks``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _durable, _journal, _locking, _records, _recovery
from ._journal import JournalWriter
from .errors import BlobIOError, os_error

if TYPE_CHECKING:
    from ._blocks import BlockStore
    from ._meta import Meta
    from ._state import State

CHECKPOINT_BYTES = 64 * 1024  # journal size that triggers a checkpoint
CHECKPOINT_RECORDS = 2048  # journal records that trigger one: bounds replay time at open
# A journal past its bound is rotated instead of checkpointed when the
# session has only appended since the manifest, under sync="normal", and made
# none of it durable: a new journal over the same manifest carries the
# session's rows in one append record (docs/design.md, item 4). That needs no
# block fsync and no manifest. Once the rows since the manifest pass
# ROTATE_BYTES, the bound checkpoints, which makes them durable: a power cut
# never loses more than that (or what the last durable point left).
ROTATE_BYTES = 64 << 20
# Rows logged in records (F6 ``r``) are read at every open but cost little to
# replay: they count towards this bound instead of CHECKPOINT_BYTES.
LOGGED_JOURNAL_BYTES = 1 << 20
# close() checkpoints, rather than appending a close marker, past this many
# records: the next open then replays nothing. Collectors that open, append
# and close all day would otherwise make every open replay their sessions.
# A process that reopens the blob replays only what is new (design.md, item
# 22); another one replays the whole journal: about 1.7 us a record, cold.
CLOSE_CHECKPOINT_RECORDS = 96
# ... and past this many blocks written since the last durable point: the
# checkpoint (a few fsyncs, nothing next to writing that many blocks) spares
# every later open replaying them and their checksums.
CLOSE_CHECKPOINT_BLOCKS = 16
# ... and past this many bytes of logged rows (F6 ``r``) in the journal, which
# every reader's open reads and checks. Below it the journal keeps them, and
# its padding (less than PAD_BYTES of zeros): a sync="full" collector that
# opens, appends and closes would otherwise checkpoint at every close
# (design.md, item 21).
CLOSE_CHECKPOINT_LOGGED = 256 << 10


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
_FLUSH_FAILED = (
    "Its record was written, but the flush that makes it survive power loss failed: whether "
    "it survives (a power cut, or an unmount after this I/O error) is decided when the blob "
    "is next opened. Every transaction before it survives as sync= says."
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
class Marks:
    """What the engine must remember between durable points, in one place."""

    dirty: set[int] = field(default_factory=set)  # blocks written since the last durable point
    new_files: bool = False  # block files created since the last durable point
    deleted: bool = False  # block files deleted since blocks/ was last fsynced
    since: int = 0  # commits since the last durable point
    logged: int = 0  # row bytes logged in records (F6 ``r``) since blocks were last fsynced
    last_closed: bool = False  # the journal ends with a close marker
    # An open marker starts the session's records in the journal and gives
    # them its boot id. It is written before the session's first record, and
    # made durable before its first block file is created, so that a crash of
    # this session is visible to the next open even if it dies before its
    # first commit (that open must then delete the files).
    opened: bool = False
    marker_durable: bool = False
    # The manifest's generation and length. The journal may be rotated while
    # every commit since the manifest is an append and none of them is
    # durable: then the manifest is the last durable state, and one append
    # record says what the journal held (see DurablePoints._rotate).
    base: int = 0
    base_length: int = 0
    rotatable: bool = False

    def settled(self, closing: bool) -> bool:
        """Nothing to make durable (and, when ``closing``, the journal says "closed")."""
        return self.since == 0 and not self.dirty and (self.last_closed or not closing)

    def session_opened(self) -> None:
        self.opened = True
        self.last_closed = False

    def committed(self, written: list[int], new_files: bool, *, full: bool, append: bool) -> None:
        self.last_closed = False
        if not append:
            self.rotatable = False
        if full:  # every block was fsynced before the record (Engine.commit)
            self.since = self.logged = 0
            self.dirty.clear()
        else:
            self.dirty.update(written)
            self.new_files |= new_files
            self.since += 1

    def made_durable(self, closing: bool, length: int) -> None:
        self.deleted = self.new_files = False
        self.dirty.clear()
        self.since = self.logged = 0
        self.last_closed = closing
        if length != self.base_length:  # the manifest is no longer the durable state
            self.rotatable = False

    def checkpointed(self, closing: bool, gen: int, length: int, *, full: bool) -> None:
        self.deleted = self.new_files = False
        self.dirty.clear()
        self.since = self.logged = 0
        self.opened = self.marker_durable = False  # the next record starts with a new marker
        self.last_closed = closing
        self.base, self.base_length = gen, length
        self.rotatable = not full

    def rotated(self) -> None:
        self.opened = self.marker_durable = True  # the new journal's open marker is synced
        self.last_closed = False


class DurablePoints:
    """Durable points, the journal's bound, rotation and checkpoints of an engine."""

    root: str
    meta: Meta
    state: State
    blocks: BlockStore
    journal: JournalWriter
    full: bool
    boot: str
    probe: _locking.ReaderProbe
    broken: str | None
    row_bytes: int
    marks: Marks
    txn: object

    def past_bound(self) -> bool:
        """The journal has passed its bound: the next transaction rotates or checkpoints it."""
        j = self.journal
        return (
            j.size - j.logged > CHECKPOINT_BYTES
            or j.seq > CHECKPOINT_RECORDS
            or j.size > LOGGED_JOURNAL_BYTES
        )

    def durable_point(self, *, closing: bool) -> None:
        """Make every commit so far survive power loss (``flush()`` / ``close()``).

        Checkpoints if the journal is long; if that fails for lack of disk
        space (before its commit point), falls back to a sync record, for
        which the journal always keeps room: a full disk does not stop a
        durable point.
        """
        assert self.txn is None
        m = self.marks
        if m.settled(closing):
            if self.state.free:  # everything is durable: blocks freed earlier may go now
                _recovery.reap(self.state, self.blocks, self.probe)
            return
        j = self.journal
        # Not while the interpreter shuts down (a close from __del__): torch
        # may be half torn down by then.
        long = j.size - j.logged > CHECKPOINT_BYTES or (
            closing
            and (
                j.seq > CLOSE_CHECKPOINT_RECORDS
                or len(m.dirty) > CLOSE_CHECKPOINT_BLOCKS
                or j.logged > CLOSE_CHECKPOINT_LOGGED
            )
        )
        checkpointed = (
            long and not sys.is_finalizing() and self._checkpoint(closing=closing, optional=True)
        )
        if checkpointed and closing:
            return  # everything is durable, and the new journal says "closed"
        with self._poison_on_error("making commits durable", _DURABLE_POINT):
            st, dirty = self.state, m.dirty
            new_files = m.new_files or m.deleted
            sums = _recovery.sync_and_sum(st, self.blocks, dirty, new_files=new_files, sums=dirty)
            self._allocate_ahead()
            record = _records.sync_record(closing, sums)
            self.journal.append(record)
            self.journal.sync()
            st.apply(record, self.meta.block_size, "sync")
            m.made_durable(closing, st.length)
        _recovery.reap(st, self.blocks, self.probe)

    def _bound(self) -> None:
        """The journal passed a bound: rotate it, or checkpoint (before a transaction)."""
        m = self.marks
        grown = (self.state.length - m.base_length) * self.row_bytes
        if m.rotatable and 0 < grown <= ROTATE_BYTES:
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
        st, m = self.state, self.marks
        assert st.length > m.base_length  # there are rows to carry (see _bound)
        salt = _journal.stage_rotation(
            self.root, st.uuid, st.gen + 1, base=m.base, boot=self.boot, length=st.length
        )
        with self._poison_on_error("rotating the journal", _COMMITTED_ALL):
            _durable.install(self.journal.path)  # the rotation's commit point
            st.gen += 1
            st.seq = _locking.snapshot_seq(st.gen, 2)  # the carried record's
            self.journal.close()
            self.journal = JournalWriter(self.root, salt, 2)
        m.rotated()

    def _checkpoint(self, *, closing: bool = False, optional: bool = False) -> bool:
        """Make all blocks durable, write a new manifest and start an empty journal.

        The manifest and journal are staged first: if that fails (a full
        disk), nothing changed and the error is raised, or, if ``optional``,
        False is returned. Returns True once the checkpoint is in place.
        """
        assert self.txn is None
        st, m = self.state, self.marks
        with self._poison_on_error("checkpointing", _DURABLE_POINT):
            new_files = m.new_files or m.deleted
            sums = _recovery.sync_and_sum(
                st, self.blocks, m.dirty, new_files=new_files, sums=st.blocks
            )
            m.deleted = m.new_files = False
        try:
            gen, salt = _recovery.stage_checkpoint(
                self.root, st, self.meta.block_size, closed=closing, sums=sums, logged=self.full
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
        m.checkpointed(closing, st.gen, st.length, full=self.full)
        _recovery.reap(st, self.blocks, self.probe)
        return True

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
        kind = self.meta.noun
        return os_error(
            BlobIOError,
            exc.errno if isinstance(exc, OSError) else None,
            f"{kind} {self.root!r}: {self.broken}. {status} The handle is closed; reopen the "
            f"{kind} (or run `tensorblob recover`): the open recovers, losing nothing "
            "committed that reached the disk",
            getattr(exc, "filename", None),
        )
