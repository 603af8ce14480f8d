"""Cross-process locks: one writer at a time (filelock), and the readers' snapshot leases.

``lock`` is held exclusively by the one writer for as long as it is open. The
kernel drops it when the holder dies, so a killed writer never leaves the
blob locked. Once open, the writer records its pid and host in the file (informational:
a waiting writer names the holder in its error).

``readers`` carries one shared byte-range lock per open reader, at the byte
whose offset is the reader's snapshot sequence number ``seq`` (see
``snapshot_seq``). A block first referenced by the commit with sequence
``born`` and freed by the one with sequence ``F`` is needed only by
snapshots in ``[born, F)``, so the writer may delete it once no reader holds
a lock in that range. The locks are Linux open-file-
description locks: per handle, not per process, released by the kernel when
the holder dies, and never blocking anyone: a reader never waits for the
writer and the writer only tests for readers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

import filelock

from . import _durable
from .errors import LockTimeoutError

LOCK = "lock"
READERS = "readers"
_EOF = 0  # l_len 0: to the end of the file and beyond
REAP_BYTE = 1 << 62  # above every snapshot seq: held by the writer while it deletes blocks
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux (x86_64, aarch64)


@dataclass
class LockInfo:
    """What ``probe_lock`` found about the writer lock."""

    exists: bool = False
    held: bool = False  # some process holds the writer lock right now
    text: str = ""  # what the lock file says: "pid N on HOST" of the last writer
    pid: int | None = None  # the holder's pid according to /proc/locks, if visible


def snapshot_seq(gen: int, q: int) -> int:
    """Order snapshots: generation, then the journal frame that ends them."""
    return (gen << 32) | q


def _lock_range(fd: int, kind: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))


def _locked(fd: int, start: int, end: int) -> bool:
    """Does some open file description hold a lock on bytes ``[start, end)``? Only asks."""
    if end <= start:
        return False
    req = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, end - start, 0)
    return _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, req))[0] != fcntl.F_UNLCK


def _owner(data: bytes) -> str:
    """The owner line of a lock file's first bytes (``record_owner``), or "" if there is
    none: it is informational and never fsynced, so a crash may leave zeros or garbage."""
    text = data.decode("utf-8", "replace").strip()
    return text if text.isprintable() else ""


def _holder(root: str) -> str:
    try:
        with open(os.path.join(root, LOCK), "rb") as f:
            text = _owner(f.read(200))
    except OSError:
        return ""
    return f" (held by {text})" if text else ""


class WriterLock:
    """The one-writer lock: an exclusive ``flock`` on ``lock``, as filelock takes it.

    A free lock is taken with one ``flock`` call on the existing file. Only a
    busy (or missing) lock goes through filelock, which waits up to
    ``timeout`` and creates the file if needed: its bookkeeping costs about
    0.25 ms per acquire and release, a sixth of a whole collector session.
    Both take the same kernel lock, so either excludes the other.
    """

    def __init__(self, root: str, timeout: float) -> None:
        self.root = root
        self.timeout = timeout
        self.path = os.path.join(root, LOCK)
        self._fd = -1  # held directly
        self._lock: filelock.FileLock | None = None  # held through filelock

    def record_owner(self) -> None:
        """Name this process in the lock file, for the error a waiting writer gets.

        Informational only: on a full disk the note is left as it was.
        """
        owner = f"pid {os.getpid()} on {socket.gethostname()}"
        with contextlib.suppress(OSError):
            fd = self._fd if self._fd >= 0 else os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            try:
                _durable.write_lock_owner(fd, self.path, owner.encode())
            finally:
                if fd != self._fd:
                    os.close(fd)

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout``; raise LockTimeoutError past it.

        A lock file that cannot be opened for writing (a read-only filesystem,
        no permission) raises that OSError at once: waiting would not help.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # filelock creates it
            fd = -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
            else:
                self._fd = fd
                return
        self._lock = filelock.FileLock(
            self.path,
            timeout=self.timeout,
            thread_local=False,
            preserve_lock_file=True,
            fallback_to_soft=False,
            poll_interval=0.005,
        )
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise LockTimeoutError(
                f"blob {self.root!r} is locked by another writer{_holder(self.root)}; gave up "
                f"after {self.timeout} s (pass a larger timeout=, or close the other writer)"
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            # Unlock before closing: a forked child may still have this file open.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
        if self._lock is not None and self._lock.is_locked:
            self._lock.release(force=True)


def hold_dir(root: str) -> int | None:
    """Take an exclusive flock on the directory ``root`` itself, without waiting.

    Returns the fd holding it, or None. Used for the hidden
    ``.NAME.creating-*`` and ``.NAME.deleting-*`` directories: their creator
    or deleter holds this lock while it works, so one whose lock can be taken
    was left behind by a process that died (or by a power cut).
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class ReaderLease:
    """A reader's hold on its snapshot: a shared lock on byte ``seq`` of ``readers``."""

    def __init__(self, root: str) -> None:
        self.fd = os.open(os.path.join(root, READERS), os.O_RDONLY | os.O_CLOEXEC)

    def hold_everything(self) -> None:
        """Protect every block while a snapshot is being read (its seq is not known yet).

        The range stops below REAP_BYTE, which a deleting writer may hold:
        this never waits and never fails on it. A block deleted after this
        lock was freed by a commit the snapshot about to be read contains.
        """
        _lock_range(self.fd, fcntl.F_RDLCK, 0, REAP_BYTE)

    def pin(self, seq: int) -> None:
        """Hold the old snapshot ``seq`` (unpickling), not racing with a deletion.

        Waits for a deletion in progress (the writer holds REAP_BYTE across
        its decision and its unlinks), so once this returns, any block of
        ``seq`` still on disk stays there. The caller checks the blocks, then
        calls ``hold(seq)``, which also lets REAP_BYTE go.
        """
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW, _FLOCK.pack(fcntl.F_RDLCK, 0, REAP_BYTE, 1, 0))
        _lock_range(self.fd, fcntl.F_RDLCK, seq, 1)

    def hold(self, seq: int) -> None:
        """Narrow the hold to snapshot ``seq``: release every byte but that one.

        Always called with byte ``seq`` locked already (by ``hold_everything``,
        whose range covers every snapshot's byte, or by ``pin``), so releasing
        the bytes on either side leaves exactly the lease on ``seq``, with no
        instant without it: two ``fcntl`` calls.
        """
        if seq:
            _lock_range(self.fd, fcntl.F_UNLCK, 0, seq)
        _lock_range(self.fd, fcntl.F_UNLCK, seq + 1, _EOF)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ReaderProbe:
    """The writer's view of the leases: is any snapshot older than ``seq`` still open?"""

    def __init__(self, root: str) -> None:
        # Open for writing: taking REAP_BYTE needs a write lock (nothing is written).
        self.fd = os.open(os.path.join(root, READERS), os.O_RDWR | os.O_CLOEXEC)

    def guard(self) -> bool:
        """Take REAP_BYTE for a deletion, without waiting; False if a reader is registering."""
        try:
            _lock_range(self.fd, fcntl.F_WRLCK, REAP_BYTE, 1)
        except OSError:
            return False
        return True

    def unguard(self) -> None:
        _lock_range(self.fd, fcntl.F_UNLCK, REAP_BYTE, 1)

    def readers_in(self, start: int, end: int) -> bool:
        """True if an open reader's snapshot (or a reader still loading one) is in [start, end)."""
        return _locked(self.fd, start, end)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ReaderCensus:
    """Which snapshots open readers hold, asked with read permission only (``check``).

    ``F_OFD_GETLK`` only asks: it takes no lock and needs no write access to
    ``readers``, unlike ``ReaderProbe``, whose REAP_BYTE lock does.
    """

    def __init__(self, root: str) -> None:
        self.fd = os.open(os.path.join(root, READERS), os.O_RDONLY | os.O_CLOEXEC)

    def readers_in(self, start: int, end: int) -> bool:
        """True if an open reader's snapshot is in ``[start, end)``."""
        return _locked(self.fd, start, end)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def probe_lock(root: str) -> LockInfo:
    """Is the writer lock held right now? Test and release at once; change nothing."""
    path = os.path.join(root, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return LockInfo()
    info = LockInfo(exists=True)
    try:
        with contextlib.suppress(OSError):  # the owner line only informs (EIO, EISDIR)
            info.text = _owner(os.pread(fd, 200, 0))
        info.held = _held(fd)
        if info.held:
            info.pid = _flock_holder(os.fstat(fd))
    finally:
        os.close(fd)
    return info


def lock_held(root: str) -> bool:
    """``probe_lock(root).held``, without reading the holder's line or pid (cheaper)."""
    try:
        fd = os.open(os.path.join(root, LOCK), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return _held(fd)
    finally:
        os.close(fd)


def _held(fd: int) -> bool:
    """Does another open file description hold the flock of ``fd``'s file? Test, release."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _flock_holder(st: os.stat_result) -> int | None:
    """The pid /proc/locks gives for a write flock on this inode (best effort)."""
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        try:
            major, minor, ino = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(ino)) == want:
                return int(parts[4])
        except ValueError:
            continue
    return None


def holder_text(lock: LockInfo) -> str:
    if lock.pid and lock.text and not lock.text.startswith(f"pid {lock.pid} "):
        return f"pid {lock.pid} (the lock file still names {lock.text})"
    if lock.text:
        return lock.text
    return f"pid {lock.pid}" if lock.pid else "an unknown process"
