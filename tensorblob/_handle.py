"""What every handle on a blob does: open and close, leases, recovery, transactions.

``Handle`` is the base of ``TensorBlob`` (and of every other front end on
the same engine): it opens a blob's directory for reading (a lease on a
committed snapshot) or writing (the writer lock, recovery, an ``Engine``),
runs transactions (``Transactions``), reads (``Reader``), keeps the cursor
(``Cursor``), makes durable points and pickles a reader as its snapshot
(``Pickled``). The front end says what a row is.
"""

from __future__ import annotations

import os
import secrets
import stat
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _dirs, _format, _recovery, _snapshot, _watch
from ._args import DEFAULT_BLOCK_SIZE, MAX_BLOCK_BYTES, abspath
from ._blocks import BlockStore, default_max_cached
from ._cursor import Cursor
from ._fstype import refuse_untrusted
from ._journal import JournalWriter
from ._locking import ReaderLease, WriterLock
from ._meta import META, Meta, read_meta
from ._pickled import Pickled
from ._rows import Reader
from ._state import State
from ._transact import Transactions
from ._txn import Engine
from .errors import (
    BlobNotFoundError,
    BlobTypeError,
    CorruptBlobError,
    InvalidArgumentError,
    NotABlobError,
    TensorBlobError,
    from_os_error,
)

# Writers whose fast path must be disabled in a forked child (its writes must
# fail like every other write through the parent's handle; see _check_writable).
_WRITERS: weakref.WeakSet[Handle] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for blob in list(_WRITERS):
        blob._fast = None


os.register_at_fork(after_in_child=_after_fork_in_child)
if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations are not evaluated at run time


class Handle(Cursor, Transactions, Reader, Pickled):
    """An open blob (see the module docstring). Not for direct use: ``TensorBlob.open``."""

    _closed = True
    # What the front end calls what it opens, and the arguments that create
    # one, for messages.
    _KIND = "blob"
    _LAYOUT = "dtype= and shape="
    _NEEDS = "Arguments dtype= and shape= are required"

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise BlobTypeError(
            f"{type(self).__name__} objects are made by {type(self).__name__}.open(), "
            "not by calling the class"
        )

    @classmethod
    def _open_dir(  # noqa: PLR0917 - open()'s checked arguments
        cls,
        path: str | os.PathLike[str],
        mode: str,
        layout: Callable[[bytes, int], Meta | None],
        fits: Callable[[Meta], list[tuple[str, Any, Any]]],
        block_size: int | None,
        max_cached_blocks: int | None,
        sync: str,
        timeout: float,
        verify: bool,
        trust_fs: bool,
    ) -> Self:
        """Open (or create, as the mode allows) the directory at ``path`` as a ``cls``.

        ``layout(uuid, block_size)`` is the Meta to create one with (None: the
        caller gave no layout); ``fits(meta)`` lists ``(name, wanted, existing)``
        for each layout argument, which must agree with an existing one. Each
        front end's ``open`` checks its arguments, then calls this.
        """
        root = abspath(path)
        if mode != "r" and not trust_fs:
            refuse_untrusted(root)
        try:
            return cls._open_checked(
                root, mode, layout, fits, block_size, max_cached_blocks, sync, timeout
            )._verifying(verify)
        except OSError as exc:
            if isinstance(exc, TensorBlobError):
                raise
            existed = os.path.isfile(os.path.join(root, META))  # else: none there, none made
            if not existed:
                doing, status = "creating it", "Nothing was created."
            else:
                doing = "opening it for writing" if mode != "r" else "opening it"
                status = "Nothing committed was lost."
            raise from_os_error(
                exc, root, f"{doing} (mode {mode!r})", status, kind=cls._KIND, readable=existed
            ) from exc

    @classmethod
    def _open_checked(  # noqa: PLR0917 - private: _open_dir()'s arguments
        cls,
        root: str,
        mode: str,
        layout: Callable[[bytes, int], Meta | None],
        fits: Callable[[Meta], list[tuple[str, Any, Any]]],
        block_size: int | None,
        max_cached_blocks: int | None,
        sync: str,
        timeout: float,
    ) -> Self:
        kind, creating = cls._KIND, mode[0] in "wa"
        try:  # one stat for os.path.exists, os.path.isdir and the reader's home
            st = os.stat(root)
            isdir: bool | None = stat.S_ISDIR(st.st_mode)
            home = (st.st_dev, st.st_ino)  # taken before meta is read (BlockFiles.home)
        except (OSError, ValueError):
            isdir = home = None  # as os.path.exists: not there (or not reachable)
        if isdir is None or (creating and isdir and _dirs.is_empty(root)):
            new = layout(secrets.token_bytes(16), block_size or DEFAULT_BLOCK_SIZE)
            if not creating or (mode[0] == "a" and new is None):
                needs = f"{cls._LAYOUT} to create one" if creating else "an existing one"
                raise BlobNotFoundError(
                    f"{kind.capitalize()} not found: no {kind} at {root!r} (mode {mode!r} "
                    f"needs {needs})"
                )
            if new is None:
                raise InvalidArgumentError(
                    f"creating {kind} {root!r}: {cls._NEEDS} for a new {kind}"
                )
            if new.block_bytes > MAX_BLOCK_BYTES:
                raise InvalidArgumentError(
                    f"block_size={new.block_size}: a block file would take {new.block_bytes} "
                    f"bytes, past the {MAX_BLOCK_BYTES} (64 TiB) a block may have "
                    "(it is mapped whole)"
                )
            _dirs.create(root, new)  # if another process won the race, open theirs below
        elif not isdir:
            raise NotABlobError(f"{root!r} is not a tensorblob (it is not a directory)")
        try:
            meta = read_meta(root)
        except NotABlobError:
            if not creating and _dirs.is_empty(root):  # as for "a": an empty directory is
                raise BlobNotFoundError(  # where a blob may be created, not a foreign one
                    f"{kind.capitalize()} not found: {root!r} is an empty directory "
                    f"(mode {mode!r} needs an existing one)"
                ) from None
            raise
        if meta.kind != cls.__name__:
            raise NotABlobError(
                f"{root!r} is a {meta.kind}, not a {cls.__name__}: open it with {meta.kind}.open"
            )
        for name, want, have in [*fits(meta), ("block_size", block_size, meta.block_size)]:
            if want is not None and want != have:
                raise InvalidArgumentError(
                    f"{name}={want!r} conflicts with {kind} {root!r}, which has {name} {have!r}; "
                    f"the layout is fixed at creation ({cls.__name__}.unlink it to start over)"
                )
        handle = cls.__new__(cls)
        max_cached = max_cached_blocks or default_max_cached()
        handle._setup(root, mode, meta, max_cached, sync, timeout, home=home)
        return handle

    def _fast_ok(self) -> bool:
        """May write() copy rows straight into the engine's window? (The front end says.)"""
        return False

    def _verifying(self, verify: bool) -> Self:
        """Turn on ``verify`` (see ``open``): blocks are checked when first mapped."""
        self._verify = verify
        if verify:
            self._blocks.verify = self._state.sums
        return self

    def _setup(  # noqa: PLR0917 - private, called once from open()
        self,
        root: str,
        mode: str,
        meta: Meta,
        max_cached: int,
        sync: str,
        timeout: float,
        snapshot: tuple[ReaderLease, State, tuple[int, int]] | None = None,
        home: tuple[int, int] | None = None,
    ) -> None:
        self._path = root
        self._mode = mode
        self._meta = meta
        self._sync = sync
        self._readable = mode[0] == "r" or "+" in mode
        self._writable = mode != "r"
        self._append = mode[0] == "a"
        self._engine: Engine | None = None
        # The engine while write() may take its fast path: writable, open, in the
        # process that opened it, and a dtype a raw byte copy is right for.
        self._fast: Engine | None = None
        self._lock: WriterLock | None = None
        self._lease: ReaderLease | None = None
        self._depth, self._doomed = 0, False  # transaction() nesting; its rollback is due
        self._pid = os.getpid()
        self._max_cached = max_cached
        self._saved_pos = 0
        self._verify = False
        self.recovery_actions: list[str] = []
        self._blocks = BlockStore(root, meta, writable=self._writable, max_cached=max_cached)
        if self._writable:
            self._lock = WriterLock(root, timeout)
            self._lock.acquire()
            try:
                self._open_writer()
                self._lock.record_owner()
            except BaseException:
                self._lock.release()
                raise
        elif snapshot is not None:  # unpickling: the lease already holds the state
            self._lease, self._state, self._blocks.home = snapshot
            self._blocks.set_logged(self._state.logged)
        else:
            self._lease = ReaderLease(root)
            try:
                # The directory as found before meta was read: the snapshot is its blob's.
                self._blocks.home = home or self._blocks.home_of(root)
                self._state = self._load_snapshot(self._lease)
            except BaseException:
                self._lease.release()
                raise
        self._closed = False
        self._pos = self._state.length if self._append else 0
        if mode[0] == "w" and self._state.length:
            try:
                with self._mutation("emptying the blob (mode 'w')") as engine:
                    engine.truncate(0)
            except BaseException:
                self.close()
                raise

    def _load_snapshot(self, lease: ReaderLease) -> State:
        """Read the newest commit under a lease that protects it from the first instant."""
        lease.hold_everything()
        state = _snapshot.load(self._path, self._meta).state
        lease.hold(state.seq)
        self._blocks.set_logged(state.logged)
        return state

    def refresh(self) -> int:
        """Move a reader to the newest committed snapshot; return the new length.

        The cursor is kept, clamped to the new length. Until the next refresh the
        reader sees exactly this snapshot, whatever the writer does. On a writer
        this only returns the length: a writer always sees its own newest state.

        Raises:
            BlobClosedError: the blob is closed.
            BlobNotFoundError: the blob was deleted, moved or created again (the snapshot is
                kept).
            CorruptBlobError: a file of the blob is damaged.
        """
        self._check_open()
        if self._lease is not None:
            if os.getpid() != self._pid:  # a forked child: take a lease of its own
                self._lease = ReaderLease(self._path)
                self._pid = os.getpid()
            try:
                state = self._load_snapshot(self._lease)
            except (CorruptBlobError, NotABlobError) as exc:
                self._lease.hold(self._state.seq)  # keep the snapshot this reader has
                if not self._blocks.gone():
                    raise
                raise BlobNotFoundError(
                    f"{self._KIND} {self._path!r} was deleted, moved or created again; this "
                    "reader keeps its snapshot (rows of blocks it never read are gone: "
                    "reading them raises SnapshotGoneError)"
                ) from exc
            self._state = state
            self._pos = min(self._pos, self._state.length)
            if self._verify:
                self._blocks.verify = self._state.sums
        return self._state.length

    def wait_for(self, n: int, timeout: float | None = None) -> int:
        """Wait until the newest commit has at least ``n`` rows, move to it; return its length.

        A ``refresh()`` that sleeps, without using the CPU, until a writer in
        another process commits enough rows (inotify on the blob directory;
        docs/guide.md, "Following a growing blob"). Returns at once if the
        newest commit already has them. Rows committed and then truncated away
        by the writer before this looks do not count.

        Args:
            n: The number of rows to wait for.
            timeout: Seconds to wait at most; None (default) waits for ever.

        Raises:
            WaitTimeoutError: ``timeout`` passed first; the snapshot moved to
                the newest commit all the same.
            UnsupportedOperationError: the blob is open for writing: only this
                handle could add the rows.
            BlobNotFoundError: the blob was deleted or moved while waiting.
            InvalidArgumentError: ``n`` or ``timeout`` is negative.
            BlobTypeError: ``n`` is not an int.
            BlobClosedError: the blob is closed.
        """
        return _watch.wait_for(self, n, timeout)

    def _open_writer(self) -> None:
        loaded = _snapshot.load(self._path, self._meta, redo_all=True)
        j = loaded.journal
        # A journal of format version 1 is checkpointed into a new one before
        # anything is appended: its readers would stop at an append record.
        old = j is not None and j.version < _format.WRITE_VERSION
        if not loaded.clean or old or _recovery.has_strays(self._path):
            steps = _recovery.recover(self._path, self._meta, self._blocks, loaded)
            actions = [s.done for s in steps]
            if loaded.clean and old:
                upgraded = f"rewrote the manifest and journal in format version {j.version + 1}"
                actions = [upgraded, *(s.done for s in steps if s.code == "temp")]
            self.recovery_actions = actions
            loaded = _snapshot.load(self._path, self._meta)
        j = loaded.journal
        assert j is not None
        # Rows that earlier sessions logged (F6 ``r``) count towards the journal's
        # bound as this session's do (DurablePoints.past_bound).
        logged = sum(len(r["r"]) for r in j.records if "r" in r)
        journal = JournalWriter(self._path, j.salt, len(j.records), j.end, logged)
        self._engine = Engine(
            self._path,
            self._meta,
            loaded.state,
            self._blocks,
            journal,
            full=self._sync == "full",
            last_closed=loaded.clean,
            base=j.base,
            # Rotation needs the manifest to be the durable state: no commit since.
            rotatable=loaded.kept == 0,
        )
        self._state = loaded.state
        if self._fast_ok():
            self._fast = self._engine
            _WRITERS.add(self)

    def close(self) -> None:
        """Close the blob: roll back an open transaction, make commits durable, release locks.

        On a writer this is a durable point: when it returns, every committed
        transaction survives power loss. Closing twice is allowed; after close
        every other call raises BlobClosedError.

        Raises:
            BlobIOError: making the commits durable failed; the handle is closed
                anyway, and the next open recovers.
        """
        if getattr(self, "_closed", True):
            return
        if os.getpid() != self._pid:
            # A forked copy: the locks, journal and lease belong to the parent.
            self._closed = True
            self._blocks.close()
            return
        try:
            if self._engine is not None and not self._engine.broken:
                if self._engine.txn is not None:
                    self._engine.rollback()
                self._engine.durable_point(closing=True)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Release everything without another write (also after the engine gave up)."""
        if not self._closed:
            self._closed = True
            self._fast = None
            if self._engine is not None:
                self._engine.close()
            self._blocks.close()
            if self._lock is not None:
                self._lock.release()
            if self._lease is not None:
                self._lease.release()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - no contextlib.suppress: globals may be gone at exit
            self.close()
        except Exception:
            pass

    def __enter__(self) -> Self:
        self._check_open()  # as io's files: a closed handle cannot be entered
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Make every committed transaction survive power loss (a durable point).

        Does nothing on a read-only blob, or inside ``transaction()``, where
        nothing is committed yet.

        Raises:
            BlobClosedError: the blob is closed.
            BlobIOError: an fsync failed; the handle closed itself (reopen the blob).
        """
        self._check_open()
        if self._engine is not None and self._depth == 0:
            try:
                self._engine.durable_point(closing=False)
            except BaseException:
                if self._engine.broken:
                    self._abandon()
                raise
