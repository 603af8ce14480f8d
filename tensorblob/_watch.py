"""Following a growing blob: ``TensorBlob.wait_for`` and ``TensorBlob.follow``.

A reader sleeps in the kernel until the blob changes: Linux inotify (through
ctypes) on the blob directory wakes it when the writer appends to
``journal`` (every commit does), renames ``journal`` or ``manifest`` into
place (checkpoints, rotations), or closes ``lock`` (the writer's lock file:
its descriptor closes when the writer closes or dies). Then it refreshes its
snapshot. Without inotify (not Linux, or the per-user limit on inotify
instances reached) it polls the same files' sizes and times every 0.2 s.
With inotify it also looks every 2 s, for writers whose changes inotify
does not see (another machine writing to a network filesystem).

"The writer closed the blob for good" is defined as: no process holds the
writer lock, and the committed state is clean (its journal ends with the
close marker the last writer's ``close()`` wrote, F7.5) and has no rows the
follower has not been given (``_writer_state`` says how this is tested
without a race). A writer that crashed did not close the blob:
followers keep waiting for the one that recovers it. Whether the lock is
held is tested as ``tensorblob check`` tests it: a non-blocking ``flock``,
released at once.
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import struct
import time
from collections.abc import Iterator
from typing import Any, Protocol

from . import _blockfiles, _locking, _snapshot
from ._journal import JOURNAL
from ._locking import LOCK
from ._manifest import MANIFEST
from ._meta import Meta
from .errors import (
    BlobClosedError,
    BlobNotFoundError,
    BlobTypeError,
    InvalidArgumentError,
    SnapshotGoneError,
    UnsupportedOperationError,
    WaitTimeoutError,
)


class Followed(Protocol):
    """What waiting and following need of a reader (a ``TensorBlob`` or a ``TensorDB``)."""

    path: str
    mode: str
    closed: bool
    _meta: Meta

    def __len__(self) -> int: ...
    def refresh(self) -> int: ...
    def tell(self) -> int: ...
    def seek(self, pos: int) -> int: ...
    def read(self, size: int | None = None) -> Any: ...
    def _unbatch(self, batch: Any) -> Any: ...


_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO = 0x2, 0x8, 0x80
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_Q_OVERFLOW, _IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF
_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_NAMES = {JOURNAL.encode(), MANIFEST.encode(), LOCK.encode()}
_FILES = (JOURNAL, MANIFEST, LOCK)

POLL_SECONDS = 0.2  # without inotify: how often the files are looked at
LOOK_SECONDS = 2.0  # with inotify: how often they are looked at anyway
CLOSE_SECONDS = 1.0  # how often to test the lock of a clean blob a writer holds
USE_INOTIFY = True  # tests turn it off to exercise the polling fallback
_ROW_CHUNK_BYTES = 4 << 20  # follow() reads at most this much at once (at least one row)

_libc = ctypes.CDLL(None, use_errno=True)
_init1 = getattr(_libc, "inotify_init1", None)
_add_watch = getattr(_libc, "inotify_add_watch", None)
if _add_watch is not None:
    _add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class Watcher:
    """Sleeps until the blob at ``root`` may have changed; costs no CPU while it sleeps.

    Events queue from construction on, so a change made after the watcher is
    created and before ``wait`` is called still wakes ``wait`` at once.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.gone = False  # the directory was deleted or moved away
        self.fd = -1
        if USE_INOTIFY and _init1 is not None and _add_watch is not None:
            fd = _init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                if _add_watch(fd, os.fsencode(root), _MASK) >= 0:
                    self.fd = fd
                else:
                    os.close(fd)
        self._stamp = self._look()

    @property
    def inotify(self) -> bool:
        """True if inotify wakes this watcher; False if it polls."""
        return self.fd >= 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _look(self) -> tuple[tuple[int, int, int], ...] | None:
        """Inode, size and mtime of the watched files; None if the blob is gone."""
        out = []
        for name in _FILES:
            try:
                st = os.stat(os.path.join(self.root, name))
            except FileNotFoundError:
                if _blockfiles.gone(self.root):
                    return None
                st = None
            out.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else (0, 0, 0))
        return tuple(out)

    def _changed(self) -> bool:
        stamp = self._look()
        if stamp is None:
            self.gone = True
        changed = stamp != self._stamp
        self._stamp = stamp
        return changed

    def wait(self, timeout: float | None) -> bool:
        """Sleep until a change (True) or ``timeout`` seconds (False; None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            step = LOOK_SECONDS if self.inotify else POLL_SECONDS
            step = step if left is None else min(step, left)
            if self.inotify and self._events(step):
                self._stamp = self._look()
                return True
            if not self.inotify:
                time.sleep(step)
            if self._changed() or self.gone:
                return True

    def _events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for inotify events; True if one concerns the blob."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(math.ceil(timeout * 1000)):
            return False
        relevant = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return relevant
            pos = 0
            while pos + _EVENT.size <= len(data):
                _, mask, _, size = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + size].rstrip(b"\0")
                pos += _EVENT.size + size
                if mask & _GONE:
                    self.gone = relevant = True
                elif mask & _IN_Q_OVERFLOW or name in _NAMES:
                    relevant = True


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidArgumentError(f"timeout={timeout!r}: must be None or a number of seconds >= 0")
    return float(timeout)


def _check_reader(blob: Followed, what: str) -> None:
    if blob.closed:
        raise BlobClosedError(f"I/O operation on closed blob {blob.path!r}")
    if blob.mode != "r":
        raise UnsupportedOperationError(
            f"{what} on blob {blob.path!r} opened {blob.mode!r}: only the writer adds rows, "
            "and it is this handle; open the blob with 'r' to wait for another process's rows"
        )


def wait_for(blob: Followed, n: int, timeout: float | None = None) -> int:
    """The logic of ``TensorBlob.wait_for`` (see there)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise BlobTypeError(f"wait_for(n) must be an int, got {type(n).__name__}")
    if n < 0:
        raise InvalidArgumentError(f"wait_for({n}): the number of rows must not be negative")
    limit = _check_timeout(timeout)
    _check_reader(blob, "wait_for()")
    deadline = None if limit is None else time.monotonic() + limit
    with Watcher(blob.path) as watcher:
        while True:
            length = blob.refresh()
            if length >= n:
                return length
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeoutError(
                    f"blob {blob.path!r} has {length} committed rows, not the {n} waited for, "
                    f"after {limit} s"
                )
            watcher.wait(left)
            if watcher.gone:
                raise BlobNotFoundError(
                    f"blob {blob.path!r} was deleted or moved while waiting for {n} rows"
                )


def follow(
    blob: Followed, batch: int | None, timeout: float | None, until_closed: bool
) -> Iterator[Any]:
    """The logic of ``TensorBlob.follow`` (see there); checks its arguments at once."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)):
        raise BlobTypeError(f"follow(batch=) must be an int or None, got {type(batch).__name__}")
    if batch is not None and batch < 1:
        raise InvalidArgumentError(f"follow(batch={batch}): must be at least 1")
    limit = _check_timeout(timeout)
    _check_reader(blob, "follow()")
    return _follow(blob, batch, limit, until_closed)


def _follow(
    blob: Followed, batch: int | None, limit: float | None, until_closed: bool
) -> Iterator[Any]:
    root = blob.path
    meta = blob._meta
    step = batch or max(1, _ROW_CHUNK_BYTES // meta.row_bytes)
    with Watcher(root) as watcher:
        idle_since = time.monotonic()
        while True:
            try:
                length, gone = blob.refresh(), False
            except BlobNotFoundError:  # deleted or moved: the rest of its snapshot, then stop
                length, gone = len(blob), True
            if blob.tell() < length:
                while blob.tell() < length:
                    start = blob.tell()
                    try:
                        rows = blob.read(min(step, length - start))
                    except SnapshotGoneError:
                        return  # deleted under it: the block files went with it
                    if batch:
                        yield rows
                        continue
                    for i, row in enumerate(blob._unbatch(rows)):
                        blob.seek(start + i + 1)  # the cursor is just past each row yielded
                        yield row
                idle_since = time.monotonic()
                if not gone:
                    continue
            if gone:
                return
            wait = None
            if until_closed:
                state = _writer_state(root, meta, length)
                if state == "closed":
                    return
                if state == "clean-held":  # a writer's close releases the lock without a frame
                    wait = CLOSE_SECONDS
            if limit is not None:
                left = limit - (time.monotonic() - idle_since)
                if left <= 0:
                    return
                wait = left if wait is None else min(wait, left)
            watcher.wait(wait)
            if watcher.gone:  # deleted or moved: nothing more will come
                return


def _writer_state(root: str, meta: Meta, length: int) -> str:
    """``"closed"``, ``"clean-held"`` (closed journal, lock held) or ``"open"``.

    Closed means: the committed state is clean with exactly ``length`` rows,
    then the lock is free, then the committed state is still the same one
    (same generation, sequence, length and frames). So at the instant of the
    lock test no writer held the blob and the last one had closed it: a
    writer that took the lock since and changed anything changed the state.
    """
    before = _identity(root, meta)
    if before is None or before[0] != length:
        return "open"
    if _locking.lock_held(root):
        return "clean-held"  # a writer's close releases the lock without a frame
    return "closed" if _identity(root, meta) == before else "open"


def _identity(root: str, meta: Meta) -> tuple[int, int, int, int] | None:
    """Length, generation, sequence and frame count of a clean committed state, else None."""
    try:
        loaded = _snapshot.load(root, meta)
    except OSError:
        return None  # the blob is being removed: the watcher will tell
    j = loaded.journal
    if not loaded.clean or j is None:
        return None
    s = loaded.state
    return (s.length, s.gen, s.seq, len(j.records))
