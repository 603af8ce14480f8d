"""``TensorBlob``: the public, file-like API over the engine."""

from __future__ import annotations

import contextlib
import errno
import io
import operator
import os
import secrets
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from . import _durable, _format, _fstype, _recovery, _snapshot, _watch
from ._blockfiles import BLOCKS, parse_block_name
from ._blocks import BlockStore, default_max_cached
from ._journal import JOURNAL, JournalWriter, encode_journal
from ._locking import LOCK, READERS, ReaderLease, WriterLock, hold_dir
from ._manifest import MANIFEST, encode_manifest
from ._meta import META, Meta, parse_dtype, parse_shape, read_meta
from ._state import State
from ._txn import Engine
from .errors import (
    BlobClosedError,
    BlobIOError,
    BlobNotFoundError,
    BlobTypeError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    NotABlobError,
    ShapeMismatchError,
    SnapshotGoneError,
    TensorBlobError,
    UnsupportedOperationError,
    from_os_error,
)

_MODES = ("r", "w", "a", "r+", "w+", "a+")
_FAST_BYTES = 1 << 16  # write() batches up to this size take the memmove fast path

# Writers whose fast path must be disabled in a forked child (its writes must
# fail like every other write through the parent's handle; see _check_writable).
_WRITERS: weakref.WeakSet[TensorBlob] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for blob in list(_WRITERS):
        blob._fast = None


os.register_at_fork(after_in_child=_after_fork_in_child)
_SYNC = ("normal", "full")
DEFAULT_BLOCK_SIZE = 8192
DEFAULT_TIMEOUT = 30.0


def _abspath(path: str | os.PathLike[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise BlobTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _create(path: str, meta: Meta) -> bool:
    """Create a blob at ``path`` atomically; return False if one appeared there meanwhile.

    The blob is built complete and durable in a hidden sibling directory, then
    renamed into place (the creation's commit point), then the parent is
    fsynced. ``path`` may be absent or an empty directory.
    """
    parent, name = os.path.split(path)
    if not os.path.isdir(parent):
        raise BlobNotFoundError(f"cannot create blob {path!r}: directory {parent!r} does not exist")
    _sweep_leftovers(parent, name)
    for _ in range(5):
        tmp = os.path.join(parent, f".{name}.creating-{secrets.token_hex(4)}")
        _durable.mkdir(tmp)
        # Locked while building: a sweeper removes a hidden directory only when
        # it can lock it (its builder died). If one took it first, start over.
        held = hold_dir(tmp)
        if held is not None:
            break
    else:  # pragma: no cover - five sweepers in a row
        raise BlobIOError(f"cannot create blob {path!r}: its build directory kept vanishing")
    try:
        _durable.create_file(os.path.join(tmp, LOCK), b"", sync=False)
        state = State(meta.uuid)
        _durable.create_file(os.path.join(tmp, META), meta.encode(), sync=True)
        _durable.create_file(
            os.path.join(tmp, MANIFEST), encode_manifest(state, meta.block_size), sync=True
        )
        journal = encode_journal(meta.uuid, state.gen, secrets.randbits(32), closed=True)
        _durable.create_file(os.path.join(tmp, JOURNAL), journal, sync=True)
        _durable.create_file(os.path.join(tmp, READERS), b"", sync=False)
        _durable.mkdir(os.path.join(tmp, BLOCKS))
        _durable.fsync_dir(tmp)
        try:
            _durable.rename(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                _remove_tree(tmp)
                return False
            raise
    except BaseException:
        if os.path.isdir(tmp):
            _remove_tree(tmp)
        raise
    finally:
        os.close(held)
    _durable.fsync_dir(parent)
    return True


def _sweep_leftovers(parent: str, name: str) -> None:
    """Remove hidden creating/deleting directories of ``name`` whose owner died.

    A live creator or deleter holds a flock on the directory (see
    ``hold_dir``); a directory that can be locked is removed.
    """
    prefixes = (f".{name}.creating-", f".{name}.deleting-")
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    removed = False
    for entry in entries:
        if not entry.startswith(prefixes):
            continue
        leftover = os.path.join(parent, entry)
        fd = hold_dir(leftover)
        if fd is None:
            continue
        try:
            _remove_tree(leftover)
            removed = True
        except OSError:
            pass  # best effort: a later creation or unlink tries again
        finally:
            os.close(fd)
    if removed:
        # Durable before anything this name does next: otherwise a power cut
        # could bring a leftover back next to a blob created after it.
        _durable.fsync_dir(parent)


def _remove_tree(root: str) -> None:
    """Remove a blob directory that nothing else can see any more (created or tombstoned).

    Tolerates another process removing the same directory at the same time.
    """
    blocks = os.path.join(root, BLOCKS)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(blocks):
            _durable.unlink(os.path.join(blocks, name), missing_ok=True)
        _durable.rmdir(blocks)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            _durable.unlink(os.path.join(root, name), missing_ok=True)
        _durable.rmdir(root)


def _as_rows(t: object, meta: Meta) -> torch.Tensor:
    """Validate a tensor to write and return it as contiguous CPU rows ``(n, *shape)``."""
    if not isinstance(t, torch.Tensor):
        raise BlobTypeError(f"write() takes a torch.Tensor, got {type(t).__name__}")
    if t.dtype != meta.dtype:
        raise DTypeMismatchError(
            f"write(): tensor dtype {t.dtype} does not match the blob's {meta.dtype}; "
            "cast it explicitly with .to(dtype)"
        )
    shape = tuple(t.shape)
    if shape == meta.shape:
        rows = t.unsqueeze(0)
    elif shape[1:] == meta.shape:
        rows = t
    elif t.dim() == 1 and meta.shape and t.numel() % meta.row_numel == 0:
        rows = t.reshape(-1, *meta.shape)
    else:
        raise ShapeMismatchError(
            f"write(): tensor of shape {shape} is not a row {meta.shape}, a batch "
            f"(n, *{meta.shape}), or a flat tensor of a multiple of {meta.row_numel} elements"
        )
    if not rows.is_cpu:
        rows = rows.cpu()
    # Rows are copied as raw bytes: materialise lazy negation and conjugation.
    rows = rows.resolve_conj().resolve_neg()
    return rows if rows.is_contiguous() else rows.contiguous()


class _Rows(list):  # a real list: default_collate hands it to torch.stack
    """The rows of a ``__getitems__`` batch, with the batch they are views of in ``collated``."""

    collated: torch.Tensor


class TensorBlob:
    """A growable on-disk array of same-shaped tensors with a file-like API.

    Open one with ``TensorBlob.open``. Every mutating call (``write``,
    ``truncate``, ``extend``, emptying with ``"w"``) is one atomic, crash-safe
    transaction; ``transaction()`` groups several. A reader sees one committed
    snapshot until ``refresh()``. See the user guide (docs/guide.md) for modes,
    indexing, durability and concurrency.

    Attributes:
        recovery_actions: What the recovery run by this writable open did, one
            line per action; empty if the blob was clean, and for a reader.
    """

    def __init__(self) -> None:  # use TensorBlob.open()
        self._closed = True

    # -- opening and closing ----------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        dtype: str | torch.dtype | None = None,
        shape: int | tuple[int, ...] | None = None,
        block_size: int | None = None,
        max_cached_blocks: int | None = None,
        sync: str = "normal",
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool = False,
        trust_fs: bool = False,
    ) -> TensorBlob:
        """Open the blob at ``path`` (a directory), creating it if the mode allows.

        Modes follow Python files: ``"r"`` reads an existing blob; ``"w"`` creates
        it or empties an existing one (one transaction); ``"a"`` creates it if
        missing, starts at the end and every write appends; ``"+"`` adds the other
        direction. Creating is atomic: after a crash the blob is absent or
        complete. Writable modes hold the writer lock until ``close()`` and first
        recover an interrupted transaction (see ``recovery_actions``).

        Args:
            path: The blob's directory. To create it, it must be absent or empty
                and its parent must exist.
            mode: ``"r"``, ``"w"``, ``"a"``, ``"r+"``, ``"w+"`` or ``"a+"``.
            dtype: Element type, a ``torch.dtype`` or its name. Needed to create;
                for an existing blob it must match.
            shape: Shape of one row: an int, a tuple, or ``()``. Needed to create;
                for an existing blob it must match.
            block_size: Rows per block file, fixed at creation (default 8192).
                Bigger blocks mean fewer files and mappings but costlier overwrites:
                copy-on-write copies a whole block.
            max_cached_blocks: Block files this handle keeps mapped (default: a
                sixteenth of ``vm.max_map_count``, at least 128). Trades address
                space and kernel maps for remapping time; no effect on safety.
            sync: ``"normal"``: a committed transaction survives the death of the
                process; ``flush()`` and ``close()`` make everything so far survive
                power loss. ``"full"``: every transaction survives power loss when
                it returns, at the cost of fsyncs in every transaction.
            timeout: Seconds a writable open waits for the writer lock (default 30;
                0 fails at once). Readers never wait.
            verify: Check each block against the checksum recorded when its rows
                became durable, the first time this handle maps it (a read of the
                whole block; rows not yet durable have no checksum). A mismatch
                raises CorruptBlobError naming the block file. Off by default:
                ``tensorblob check --deep`` does the same for a whole blob.
            trust_fs: Open a writer even on a filesystem whose locks or fsync
                tensorblob cannot trust (NFS, SMB, Lustre, CephFS, FUSE, ...;
                read from ``/proc/self/mountinfo``). You vouch that they work
                and that no other machine writes. Readers are never refused.

        Returns:
            The open blob; use it as a context manager so that it is closed.

        Raises:
            BlobNotFoundError: ``"r"``/``"r+"`` and nothing at ``path``, or the
                parent directory of a blob to create does not exist.
            NotABlobError: ``path`` is a file or a directory tensorblob did not create.
            InvalidArgumentError: bad mode, sync, timeout, verify, trust_fs, dtype, shape,
                block_size or max_cached_blocks; dtype or shape missing to create; or a layout
                that conflicts with the existing blob.
            BlobTypeError: ``path`` is not a str or ``os.PathLike``.
            LockTimeoutError: another writer kept the lock past ``timeout``.
            CorruptBlobError: a file of the blob is damaged.
            UnsupportedVersionError: the blob has a newer format version.
            ReadOnlyFilesystemError: a writable mode on a read-only filesystem.
            BlobPermissionError: no permission to read (or, to write, write) the blob.
            DiskFullError: creating the blob, or the recovery a writable open runs,
                ran out of disk space (nothing committed was lost).
            BlobOSError: another error of the operating system.
            UntrustedFilesystemError: a writable mode on an untrusted filesystem,
                without ``trust_fs=True``.
        """
        if not isinstance(mode, str) or mode not in _MODES:
            raise InvalidArgumentError(f"mode={mode!r}: must be one of {', '.join(_MODES)}")
        if sync not in _SYNC:
            raise InvalidArgumentError(f"sync={sync!r}: must be 'normal' or 'full'")
        if max_cached_blocks is not None and (
            not isinstance(max_cached_blocks, int) or max_cached_blocks < 1
        ):
            raise InvalidArgumentError(
                f"max_cached_blocks={max_cached_blocks!r}: must be a positive int or None"
            )
        if block_size is not None and (
            not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1
        ):
            raise InvalidArgumentError(f"block_size={block_size!r}: must be a positive int")
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgumentError(f"timeout={timeout!r}: must be a non-negative number")
        if not isinstance(verify, bool):
            raise InvalidArgumentError(f"verify={verify!r}: must be True or False")
        if not isinstance(trust_fs, bool):
            raise InvalidArgumentError(f"trust_fs={trust_fs!r}: must be True or False")
        want_dtype = parse_dtype(dtype) if dtype is not None else None
        want_shape = parse_shape(shape) if shape is not None else None
        root = _abspath(path)
        if mode != "r" and not trust_fs:
            _fstype.refuse_untrusted(root)
        try:
            return cls._open(
                root, mode, want_dtype, want_shape, block_size, max_cached_blocks, sync, timeout
            )._verifying(verify)
        except OSError as exc:
            if isinstance(exc, TensorBlobError):
                raise
            doing = "opening it for writing" if mode != "r" else "opening it"
            raise from_os_error(
                exc, root, f"{doing} (mode {mode!r})", "Nothing committed was lost."
            ) from exc

    @classmethod
    def _open(  # noqa: PLR0917 - private: open()'s checked arguments
        cls,
        root: str,
        mode: str,
        want_dtype: str | None,
        want_shape: tuple[int, ...] | None,
        block_size: int | None,
        max_cached_blocks: int | None,
        sync: str,
        timeout: float,
    ) -> TensorBlob:
        creating = mode[0] in "wa"
        if not os.path.exists(root) or (creating and os.path.isdir(root) and not os.listdir(root)):
            if not creating:
                raise BlobNotFoundError(
                    f"no blob at {root!r} (mode {mode!r} needs an existing one)"
                )
            if want_dtype is None or want_shape is None:
                raise InvalidArgumentError(
                    f"creating blob {root!r}: dtype= and shape= are required for a new blob"
                )
            meta = Meta(
                secrets.token_bytes(16), want_dtype, want_shape, block_size or DEFAULT_BLOCK_SIZE
            )
            _create(root, meta)  # if another process won the race, open theirs below
        elif not os.path.isdir(root):
            raise NotABlobError(f"{root!r} is not a tensorblob (it is not a directory)")

        meta = read_meta(root)
        for name, want, have in (
            ("dtype", want_dtype, meta.dtype_name),
            ("shape", want_shape, meta.shape),
            ("block_size", block_size, meta.block_size),
        ):
            if want is not None and want != have:
                raise InvalidArgumentError(
                    f"{name}={want!r} conflicts with blob {root!r}, which has {name} {have!r}; "
                    "a blob's layout is fixed at creation (TensorBlob.unlink it to start over)"
                )
        blob = cls()
        blob._setup(root, mode, meta, max_cached_blocks or default_max_cached(), sync, timeout)
        return blob

    def _verifying(self, verify: bool) -> TensorBlob:
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
        snapshot: tuple[ReaderLease, State] | None = None,
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
        self._row_shape = torch.Size(meta.shape)
        self._lock: WriterLock | None = None
        self._lease: ReaderLease | None = None
        self._depth = 0
        self._doomed = False
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
            self._lease, self._state = snapshot
        else:
            self._lease = ReaderLease(root)
            try:
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
        return state

    def refresh(self) -> int:
        """Move a reader to the newest committed snapshot; return the new length.

        The cursor is kept, clamped to the new length. Until the next refresh the
        reader sees exactly this snapshot, whatever the writer does. On a writer
        this only returns the length: a writer always sees its own newest state.

        Raises:
            BlobClosedError: the blob is closed.
            CorruptBlobError: a file of the blob is damaged.
        """
        self._check_open()
        if self._lease is not None:
            if os.getpid() != self._pid:  # a forked child: take a lease of its own
                self._lease = ReaderLease(self._path)
                self._pid = os.getpid()
            self._state = self._load_snapshot(self._lease)
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

    def follow(
        self, batch: int | None = None, timeout: float | None = None, *, until_closed: bool = True
    ) -> Iterator[torch.Tensor]:
        """Yield rows from the cursor on, and then each row as a writer commits it (``tail -f``).

        Refreshes the snapshot as it goes and advances the cursor past what it
        yields. Sleeps without using the CPU while no row comes (see
        ``wait_for``). Stops when the writer has closed the blob for good: no
        writer holds the lock and the last one closed the blob (a crashed
        writer did not: it waits for the next one), and every row was yielded.

        Args:
            batch: None (default) yields one row at a time, shape ``shape``;
                an int yields tensors ``(k, *shape)`` of what is committed, up to
                ``batch`` rows each (it never waits to fill a batch).
            timeout: Stop after this many seconds without a new row; None
                (default) has no limit.
            until_closed: False keeps following after the writer closes the
                blob, for the next writer (until ``timeout``).

        Raises:
            UnsupportedOperationError: the blob is open for writing.
            InvalidArgumentError: ``batch`` is below 1, or ``timeout`` negative.
            BlobTypeError: ``batch`` is not an int or None.
            BlobClosedError: the blob is closed.
        """
        return _watch.follow(self, batch, timeout, until_closed)

    def _open_writer(self) -> None:
        loaded = _snapshot.load(self._path, self._meta)
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
        journal = JournalWriter(self._path, j.salt, len(j.records))
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
        if not (self._meta.dtype.is_complex or self._meta.row_bytes == 0):
            self._fast = self._engine
            self._fast_rows = _FAST_BYTES // self._meta.row_bytes
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
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> TensorBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        """Pickle a reader as its snapshot (for DataLoader workers); refuse writers.

        The unpickled copy takes its own lease on the same snapshot and reads
        exactly it. It never switches to another snapshot: if the blocks are
        gone (the original and every other reader of it closed, and the writer
        freed them) or the blob was deleted, unpickling raises
        SnapshotGoneError. The original open is enough to keep them.
        """
        self._check_open()
        if self._engine is not None:
            raise UnsupportedOperationError(
                f"blob {self._path!r} is open for writing and cannot be pickled; "
                "open it read-only ('r') for DataLoader workers"
            )
        return (_unpickle_reader, (self._path, self._state, self._pos, self._max_cached))

    @classmethod
    def unlink(
        cls,
        path: str | os.PathLike[str],
        *,
        missing_ok: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Delete the blob at ``path``, atomically: after a crash it is either whole or gone.

        Takes the writer lock first. Refuses a directory that holds files
        tensorblob did not create, so it never deletes anything else.

        Raises:
            BlobNotFoundError: nothing at ``path`` (unless ``missing_ok``).
            NotABlobError: ``path`` is not a blob, or holds foreign files.
            CorruptBlobError: the blob's ``meta`` is damaged.
            LockTimeoutError: a writer kept the lock past ``timeout``.
        """
        root = _abspath(path)
        if not os.path.lexists(root):
            if missing_ok:
                return
            raise BlobNotFoundError(f"no blob at {root!r}")
        if not os.path.isdir(root) or os.path.islink(root):
            raise NotABlobError(f"{root!r} is not a tensorblob (it is not a directory)")
        read_meta(root)
        foreign = sorted(set(os.listdir(root)) - _recovery.KNOWN_FILES)
        blocks_dir = os.path.join(root, BLOCKS)
        if os.path.isdir(blocks_dir):
            foreign += [
                f"{BLOCKS}/{n}" for n in os.listdir(blocks_dir) if parse_block_name(n) is None
            ]
        if foreign:
            raise NotABlobError(
                f"refusing to delete {root!r}: it holds files tensorblob did not create: "
                f"{', '.join(foreign[:5])}"
            )
        lock = WriterLock(root, timeout)
        lock.acquire()
        parent, name = os.path.split(root)
        tomb = os.path.join(parent, f".{name}.deleting-{secrets.token_hex(4)}")
        try:
            _durable.rename(root, tomb)  # the commit point: the blob is gone
            _durable.fsync_dir(parent)
        finally:
            lock.release()
        held = hold_dir(tomb)  # if a sweeper got there first, it removes the tombstone
        if held is not None:
            try:
                _remove_tree(tomb)
            finally:
                os.close(held)
            # The tombstone's removal is durable too: a power cut after a later
            # creation of the name must not bring it back beside the new blob.
            _durable.fsync_dir(parent)
        _sweep_leftovers(parent, name)

    # -- properties -------------------------------------------------------

    @property
    def path(self) -> str:
        """Absolute path of the blob directory."""
        return self._path

    @property
    def mode(self) -> str:
        """The mode the blob was opened with (``"r"``, ``"a+"``, ...)."""
        return self._mode

    @property
    def dtype(self) -> torch.dtype:
        """Element type of every row, fixed at creation."""
        return self._meta.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one row, fixed at creation."""
        return self._meta.shape

    @property
    def block_size(self) -> int:
        """Rows per block file, fixed at creation."""
        return self._meta.block_size

    @property
    def sync(self) -> str:
        """This handle's durability level, ``"normal"`` or ``"full"`` (see ``open``)."""
        return self._sync

    @property
    def closed(self) -> bool:
        """True once the blob is closed, by ``close()`` or by a failed commit step."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} rows"
        return (
            f"TensorBlob({self._path!r}, mode={self._mode!r}, dtype={self.dtype}, "
            f"shape={self.shape}, {state})"
        )

    # -- checks -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BlobClosedError(f"I/O operation on closed blob {self._path!r}")

    def _check_readable(self) -> None:
        self._check_open()
        if not self._readable:
            raise UnsupportedOperationError(
                f"blob {self._path!r} is not open for reading (mode {self._mode!r})"
            )

    def _check_writable(self) -> Engine:
        self._check_open()
        if self._engine is not None and os.getpid() != self._pid:
            raise UnsupportedOperationError(
                f"blob {self._path!r} was opened for writing by process {self._pid}; "
                "a forked child cannot write through it (open it again in the child)"
            )
        if self._engine is None:
            raise UnsupportedOperationError(
                f"blob {self._path!r} is not open for writing (mode {self._mode!r})"
            )
        return self._engine

    # -- transactions -----------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[TensorBlob]:
        """Group the calls inside into one atomic commit.

        After a crash either everything done inside the block is there or none of
        it is, and readers never see part of it. On an exception inside, data,
        length and cursor roll back and the exception propagates. Nested blocks
        join the outermost one, which alone commits or rolls back (no savepoints).

        Raises:
            UnsupportedOperationError: the blob is not writable.
            BlobClosedError: the blob is closed, or was closed inside the block
                (which rolled the transaction back).
            TensorBlobError: an operation inside failed after it had changed the
                blob and its exception was swallowed; everything was rolled back.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        outer = self._depth == 0
        if outer:
            with self._os_errors("starting a transaction"):
                self._begin(engine)
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            if outer:
                self._rollback()
            else:
                self._doomed = True  # no savepoints: the outer transaction cannot commit
            raise
        self._depth -= 1
        if outer:
            with self._os_errors("committing a transaction"):
                self._commit(engine)

    @contextlib.contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        """Raise an OSError of the library's own disk work as a tensorblob error (from_os_error).

        Only around the library's own operations, never around user code.
        """
        try:
            yield
        except OSError as exc:
            if isinstance(exc, TensorBlobError):
                raise
            raise from_os_error(exc, self._path, doing) from exc

    def _begin(self, engine: Engine) -> None:
        engine.begin()
        self._saved_pos = self._pos
        self._doomed = False

    def _commit(self, engine: Engine) -> None:
        if engine.txn is None:  # close() inside the block rolled it back
            raise BlobClosedError(
                f"blob {self._path!r} was closed inside transaction(); it was rolled back"
            )
        if self._doomed:
            self._rollback()
            raise TensorBlobError(
                f"transaction on {self._path!r} rolled back: an operation inside it failed"
            )
        try:
            engine.commit()
        except BaseException:
            if engine.broken:
                self._abandon()
            elif engine.txn is not None:
                self._rollback()
            raise

    def _rollback(self) -> None:
        engine = self._engine
        assert engine is not None
        if engine.broken:  # a step that wrote to the journal failed: give the handle up
            self._abandon()
        if engine.txn is not None:
            engine.rollback()
        self._pos = self._saved_pos
        self._doomed = False

    @contextlib.contextmanager
    def _mutation(self, doing: str) -> Iterator[Engine]:
        """Run one mutating call as its own transaction, or as part of the open one."""
        engine = self._check_writable()
        with self._os_errors(doing):
            if self._depth:
                try:
                    yield engine
                except BaseException:
                    self._doomed = True
                    raise
                return
            with self.transaction():
                yield engine

    # -- writing ----------------------------------------------------------

    def write(self, t: torch.Tensor) -> int:
        """Write rows at the cursor (at the end in append modes); return how many.

        ``t`` is a row of ``shape``, a batch ``(n, *shape)``, or a flat 1-D
        tensor of whole rows, with exactly the blob's dtype. Rows past the end
        grow the blob; rows before it are overwritten. The call is one
        transaction (or part of the open one): after a crash all its rows are
        there or none, and it is durable as ``sync`` says.

        Raises:
            UnsupportedOperationError: the blob is open read-only, or a forked
                child writes through its parent's writer.
            BlobTypeError: ``t`` is not a tensor.
            DTypeMismatchError: wrong dtype (nothing is cast silently).
            ShapeMismatchError: not a row, batch or flat run of rows.
            BlobClosedError: the blob is closed.
            DiskFullError: the disk is full: nothing of this call was committed,
                and the handle stays usable (retry once space is freed).
            BlobOSError: another disk error before the commit point: nothing
                of this call was committed, and the handle stays usable.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        try:
            fast = self._fast
            if fast is not None and type(t) is torch.Tensor and t.dtype is self._meta.dtype:
                # The fast path: a row or a small batch, copied straight into the
                # write window of the engine (Engine.fast_write).
                shape = t.shape
                if shape == self._row_shape:
                    n = 1
                elif shape[1:] == self._row_shape and 0 < shape[0] <= self._fast_rows:
                    n = shape[0]
                else:
                    n = 0
                if n and t.is_contiguous() and t.is_cpu and not t.is_neg():
                    pos = None if self._append else self._pos
                    try:
                        end = fast.fast_write(t.data_ptr(), n, pos, commit=not self._depth)
                    except BaseException:
                        if fast.broken:
                            self._abandon()
                        raise
                    if end >= 0:
                        self._pos = end
                        return n
            engine = self._check_writable()
            rows = _as_rows(t, self._meta)
            n = rows.shape[0]
            if n == 0:
                return 0
            # The hot path of every collector: the same steps as _mutation(),
            # without the cost of two generator context managers.
            outer = self._depth == 0
            if outer:
                self._begin(engine)
            try:
                pos = self._state.length if self._append else self._pos
                engine.write(pos, rows)
            except BaseException:
                if outer:
                    self._rollback()
                else:
                    self._doomed = True
                raise
            self._pos = pos + n
            if outer:
                self._commit(engine)
            return n
        except OSError as exc:  # the library's own disk work only: nothing else runs here
            if isinstance(exc, TensorBlobError):
                raise
            raise from_os_error(exc, self._path, "writing rows") from exc

    def truncate(self, pos: int | None = None) -> int:
        """Cut the blob to ``pos`` rows (default: the cursor); return the new length.

        One transaction (or part of the open one). A ``pos`` at or past the end
        changes nothing. The cursor is kept unless it lies past the new end, where
        it moves to the end. The cut rows' disk space is freed once the truncation
        is durable and no reader's snapshot needs it.

        Raises:
            InvalidArgumentError: ``pos`` is negative.
            BlobTypeError: ``pos`` is not an int.
            UnsupportedOperationError: the blob is not writable.
            BlobClosedError: the blob is closed.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        pos = self._pos if pos is None else self._as_int(pos, "truncate(pos)")
        if pos < 0:
            raise InvalidArgumentError(f"truncate({pos}): the size must not be negative")
        if pos < self._state.length:
            with self._mutation("truncating"):
                engine.truncate(pos)
                self._pos = min(self._pos, pos)
        return self._state.length

    def extend(self, other: TensorBlob, maintain_order: bool = True) -> int:
        """Append all rows of ``other`` (another open blob) as one transaction; return the count.

        With ``maintain_order=True`` the rows of ``other`` follow in order. With
        ``maintain_order=False``, if both blobs have the same block size and
        ``other`` has at least one full block, its full blocks are copied as whole
        files (faster), and the rows come in this order: this blob's full blocks,
        ``other``'s full blocks, this blob's last partial block, ``other``'s last
        partial block. The cursor moves to the new end.

        Raises:
            BlobTypeError: ``other`` is not a TensorBlob.
            DTypeMismatchError: the dtypes differ.
            ShapeMismatchError: the row shapes differ.
            UnsupportedOperationError: this blob is not writable.
            BlobClosedError: either blob is closed.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        if not isinstance(other, TensorBlob):
            raise BlobTypeError(f"extend() takes a TensorBlob, got {type(other).__name__}")
        other._check_open()
        if other.dtype != self.dtype:
            raise DTypeMismatchError(
                f"extend(): other blob has dtype {other.dtype}, this one {self.dtype}"
            )
        if other.shape != self.shape:
            raise ShapeMismatchError(
                f"extend(): other blob has row shape {other.shape}, this one {self.shape}"
            )
        total = len(other)
        if total == 0:
            self._pos = self._state.length
            return 0
        other_blocks = list(other._state.blocks)
        B = self.block_size
        with self._mutation("extending"):
            if not maintain_order and other.block_size == B and total >= B:
                nfull = total // B
                sources = [other._blocks.path(b) for b in other_blocks[:nfull]]
                engine.append_blocks(sources, other._range(nfull * B, total))
            else:
                for start in range(0, total, B):
                    engine.write(self._state.length, other._range(start, min(start + B, total)))
            self._pos = self._state.length
        return total

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

    # -- cursor -----------------------------------------------------------

    @staticmethod
    def _as_int(x: object, what: str) -> int:
        if isinstance(x, bool):
            raise BlobTypeError(f"{what} must be an int, got bool")
        try:
            return operator.index(x)  # type: ignore[arg-type]
        except TypeError:
            raise BlobTypeError(f"{what} must be an int, got {type(x).__name__}") from None

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        """Move the cursor; return the new position, clamped to ``[0, len(blob)]``.

        Unlike a Python file's, the cursor never goes past the end. Changes
        nothing on disk.

        Raises:
            BlobTypeError: ``pos`` is not an int.
            InvalidArgumentError: ``whence`` is not SEEK_SET, SEEK_CUR or SEEK_END.
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        pos = self._as_int(pos, "seek(pos)")
        if not isinstance(whence, int) or isinstance(whence, bool):
            raise InvalidArgumentError(f"seek(whence={whence!r}): must be 0, 1 or 2")
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._state.length + pos
        else:
            raise InvalidArgumentError(f"seek(whence={whence!r}): must be 0, 1 or 2")
        self._pos = max(0, min(new, self._state.length))
        return self._pos

    def tell(self) -> int:
        """Return the cursor position (a row number).

        Raises:
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        return self._pos

    # -- reading ----------------------------------------------------------

    def __len__(self) -> int:
        """Return the number of rows.

        A reader counts the rows of its snapshot; a writer counts its current
        rows, including those of its open transaction.

        Raises:
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        return self._state.length

    def read(self, size: int | None = None) -> torch.Tensor:
        """Read up to ``size`` rows from the cursor (all the rest if None or negative).

        Returns a new tensor ``(k, *shape)`` that does not alias the blob's
        files; ``k == 0`` at the end. Advances the cursor by ``k``.

        Raises:
            UnsupportedOperationError: the blob is open write-only (``"w"``, ``"a"``).
            BlobTypeError: ``size`` is not an int or None.
            BlobClosedError: the blob is closed.
        """
        self._check_readable()
        n = self._state.length
        if size is None:
            size = -1
        size = self._as_int(size, "read(size)")
        end = n if size < 0 else min(n, self._pos + size)
        out = self._range(self._pos, max(self._pos, end))
        self._pos = max(self._pos, end)
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yield rows from the cursor to the end, advancing the cursor.

        Each row is a new tensor that does not alias the blob's files.

        Raises:
            UnsupportedOperationError: the blob is open write-only.
            BlobClosedError: the blob is closed.
        """
        self._check_readable()
        return self._iter_rows()

    def _iter_rows(self) -> Iterator[torch.Tensor]:
        B = self.block_size
        while self._pos < self._state.length:
            start = self._pos
            chunk = self._range(start, min(self._state.length, (start // B + 1) * B))
            for i in range(chunk.shape[0]):
                self._pos = start + i + 1
                yield chunk[i]

    def _range(self, start: int, stop: int) -> torch.Tensor:
        """Copy rows ``start:stop`` (within bounds) into a new tensor."""
        if stop <= start:
            return torch.empty((0, *self.shape), dtype=self.dtype)
        # Copied as bytes with numpy: one plain memcpy per block, like a raw
        # np.memmap copy (torch's threaded copy stalls on a busy machine).
        B = self.block_size
        blocks, get = self._state.blocks, self._blocks.get_bytes
        s0, o0 = divmod(start, B)
        n = stop - start
        if n <= B - o0:
            out = get(blocks[s0])[o0 : o0 + n].copy()
        else:
            out = np.empty((n, self._meta.row_bytes), dtype=np.uint8)
            pos = start
            while pos < stop:
                slot, off = divmod(pos, B)
                k = min(B - off, stop - pos)
                out[pos - start : pos - start + k] = get(blocks[slot])[off : off + k]
                pos += k
        return torch.from_numpy(out).view(self.dtype).reshape(n, *self.shape)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows at the int64 positions ``idx`` (1-D, any order, repeats allowed)."""
        n = self._state.length
        if idx.numel() == 0:
            return torch.empty((0, *self.shape), dtype=self.dtype)
        # In numpy: far less per-call overhead than torch ops on small tensors.
        ia = idx.numpy()
        lo, hi = int(ia.min()), int(ia.max())
        if lo < 0:  # negative positions count from the end
            ia = np.where(ia < 0, ia + n, ia)
            lo, hi = int(ia.min()), int(ia.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise InvalidIndexError(
                f"index {bad if bad >= 0 else bad - n} is out of range "
                f"for blob {self._path!r} of length {n}"
            )
        # Rows are gathered as raw bytes, so any dtype works.
        B = self.block_size
        if lo // B == hi // B:  # one block: its mapping, indexed directly
            rows = torch.from_numpy(self._blocks.get_bytes(self._state.blocks[lo // B]))
            out = torch.index_select(rows, 0, torch.from_numpy(ia - (lo // B) * B))
        else:
            slots = ia // B
            out = self._blocks.gather(self._state.blocks, slots, ia - slots * B)
        return out.view(self.dtype).reshape(len(ia), *self.shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        """``blob[i]``, ``blob[a:b:c]``, ``blob[list | tuple | 1-D int tensor | ndarray]``.

        Reads this handle's snapshot without moving the cursor, in any mode.
        Always returns a new tensor that does not alias the blob's files.

        Raises:
            InvalidIndexError: an index is out of range.
            BlobTypeError: the index is of an unsupported type (str, float, bool, ...).
            InvalidArgumentError: a slice step is 0.
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        n = self._state.length
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
                raise InvalidIndexError(
                    f"index {index} is out of range for blob {self._path!r} of length {n}"
                )
            slot, off = divmod(i, self.block_size)
            return self._blocks.get(self._state.blocks[slot])[off].clone()
        if isinstance(index, slice):
            if index.step == 0:
                raise InvalidArgumentError("slice step cannot be zero")
            try:
                start, stop, step = index.indices(n)
            except TypeError:
                raise BlobTypeError(f"slice bounds must be ints or None, got {index!r}") from None
            if step == 1:
                return self._range(start, stop)
            r = range(start, stop, step)
            if not r:
                return torch.empty((0, *self.shape), dtype=self.dtype)
            return self._gather(torch.arange(r.start, r.stop, r.step, dtype=torch.int64))
        return self._gather(self._index_tensor(index))

    def __getitems__(self, indices: Any) -> list[torch.Tensor]:
        """The rows at ``indices`` for a DataLoader batch, gathered in one call.

        ``DataLoader`` calls it with the list of a batch's indices, then passes
        the result to its ``collate_fn``. Returns a list of the rows (as torch's
        protocol asks), which are views of one gathered ``(n, *shape)`` tensor,
        held in the list's ``collated`` attribute: ``tensorblob.data.collate``
        returns that tensor without a copy, ``default_collate`` stacks the rows.

        Raises:
            InvalidIndexError: an index is out of range.
            BlobTypeError: ``indices`` is not a list, tuple, ndarray or 1-D tensor of ints.
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        batch = self._gather(self._index_tensor(indices))
        rows = _Rows(batch.unbind(0))
        rows.collated = batch
        return rows

    def _index_tensor(self, index: Any) -> torch.Tensor:
        if isinstance(index, (list, tuple)):
            for k, i in enumerate(index):
                if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
                    raise BlobTypeError(
                        f"a list or tuple index must hold only ints; item {k} is "
                        f"{i!r} ({type(i).__name__})"
                    )
            return torch.tensor([int(i) for i in index], dtype=torch.int64)
        if isinstance(index, np.ndarray):
            if index.dtype.kind not in "iu":
                raise BlobTypeError(f"an ndarray index must be of integers, not {index.dtype}")
            index = torch.from_numpy(np.array(index, dtype=np.int64, copy=True))
        if isinstance(index, torch.Tensor):
            if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
                raise BlobTypeError(f"a tensor index must be of integers, not {index.dtype}")
            if index.dim() > 1:
                raise BlobTypeError(f"a tensor index must be 1-D, got shape {tuple(index.shape)}")
            return index.reshape(-1).to(device="cpu", dtype=torch.int64)
        raise BlobTypeError(
            f"blob indices must be int, slice, list, tuple, 1-D int tensor or ndarray, "
            f"not {type(index).__name__}"
        )


def _unpickle_reader(path: str, state: State, pos: int, max_cached: int) -> TensorBlob:
    """A reader on exactly the pickled snapshot ``state``; SnapshotGoneError if it is gone."""
    if not os.path.isdir(path):
        raise SnapshotGoneError(
            f"cannot unpickle a reader of blob {path!r}: the blob was deleted since "
            "(open it again if it was created anew)"
        )
    blob = TensorBlob()
    meta = read_meta(path)
    if meta.uuid != state.uuid:  # block ids of another blob could match this snapshot's
        raise SnapshotGoneError(
            f"cannot unpickle a reader of blob {path!r}: the blob was deleted and created "
            "again since; open it again to read the new one"
        )
    lease = ReaderLease(path)
    try:
        lease.pin(state.seq)
        store = BlockStore(path, meta, writable=False, max_cached=max_cached)
        gone = next((b for b in state.blocks if not os.path.exists(store.path(b))), None)
        if gone is not None:
            raise SnapshotGoneError(
                f"cannot unpickle a reader of blob {path!r}: its snapshot of {state.length} "
                f"rows is gone (block file {store.path(gone)!r} was freed once no reader held "
                "the snapshot). Keep the original reader open until its copies are unpickled, "
                "or open the blob again for its newest snapshot"
            )
        lease.hold(state.seq)
    except BaseException:
        lease.release()
        raise
    blob._setup(path, "r", meta, max_cached, "normal", DEFAULT_TIMEOUT, (lease, state))
    blob._pos = min(pos, state.length)
    return blob
