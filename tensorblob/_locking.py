"""Cross-process locks: one writer at a time (filelock), and the readers' lease (flock).

``lock`` is held exclusively by the one writer for as long as it is open. The
kernel drops it when the holder dies, so a killed writer never leaves the blob
locked. ``readers`` is held *shared* by every open reader; the writer deletes
freed blocks only while it can take it exclusively (non-blocking), so a block
a reader's snapshot may still map is never deleted under it.
"""

from __future__ import annotations

import fcntl
import os

import filelock

from .errors import LockTimeoutError

LOCK = "lock"
READERS = "readers"


class WriterLock:
    def __init__(self, root: str, timeout: float) -> None:
        self.root = root
        self.timeout = timeout
        self._lock = filelock.FileLock(
            os.path.join(root, LOCK),
            timeout=timeout,
            thread_local=False,
            preserve_lock_file=True,
            fallback_to_soft=False,
            poll_interval=0.01,
        )

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise LockTimeoutError(
                f"blob {self.root!r} is locked by another writer; gave up after "
                f"{self.timeout} s (pass a larger timeout=, or close the other writer)"
            ) from None

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


class ReaderLease:
    """A shared flock on ``readers``, held while a reader is open."""

    def __init__(self, root: str) -> None:
        self.fd = os.open(os.path.join(root, READERS), os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def no_readers(root: str) -> ExclusiveLease | None:
    """Take the readers' lease exclusively if no reader holds it; else return None."""
    fd = os.open(os.path.join(root, READERS), os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return ExclusiveLease(fd)


class ExclusiveLease:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> ExclusiveLease:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
