"""Every operation that changes the disk, and the boot id: the crash-injection seam.

No other module of tensorblob writes, renames, unlinks, truncates, creates or
fsyncs anything. Each public function here performs one or more *steps*, and
before every step it calls the installed fault hook (if any) with the step's
name and path. Crash tests install a hook that kills the process at the N-th
step, then reopen the blob and compare it with a model.

Function names state their guarantee: ``write_atomic`` is all-or-nothing and
durable once it returns; ``append`` is a complete write but *not* durable
until ``fdatasync``; ``allocate`` creates a zero-filled file that is durable
only after ``fsync_paths`` and a ``fsync_dir`` of its directory. (``boot_id``
changes nothing: the power-loss model fakes it with the disk.)"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable

__all__ = [
    "allocate",
    "append",
    "boot_id",
    "copy_file",
    "create_file",
    "fdatasync",
    "fsync_dir",
    "fsync_paths",
    "install",
    "mkdir",
    "overwrite",
    "prefill",
    "rename",
    "reserve_tail",
    "rmdir",
    "set_fault_hook",
    "stage",
    "start_writeback",
    "store",
    "store_rows",
    "truncate",
    "unlink",
    "write_atomic",
    "write_lock_owner",
]

FaultHook = Callable[[str, str, "tuple[int, int] | None"], None]

_hook: FaultHook | None = None
_memmove = ctypes.memmove


def set_fault_hook(hook: FaultHook | None) -> FaultHook | None:
    """Install ``hook(step, path, extent)``, called before every disk-changing step.

    ``extent`` is ``(byte_offset, nbytes)`` for ``write_rows`` and None
    otherwise. Returns the previously installed hook.
    """
    global _hook  # one process-wide seam, by design
    old, _hook = _hook, hook
    return old


def _step(step: str, path: str, extent: tuple[int, int] | None = None) -> None:
    if _hook is not None:
        _hook(step, path, extent)


def boot_id() -> str:
    """The running kernel boot's random id (Linux): a change means the page cache was lost.
    "" if unknown: every boot then looks the same, and the power-loss rule cannot apply."""
    global _boot  # noqa: PLW0603 - read once: a process does not outlive its boot
    if _boot is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                _boot = f.read().strip().decode("ascii")
        except OSError:
            _boot = ""
    return _boot


_boot: str | None = None


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:  # a short write is rare, but allowed to happen
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        offset = None if offset is None else offset + n


def create_file(path: str, data: bytes, *, sync: bool) -> None:
    """Create ``path`` exclusively holding ``data``; with ``sync``, fsync it (not its directory)."""
    _step("create", path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        if data:
            _step("write", path)
            _write_all(fd, data)
        if sync:
            _step("fsync", path)
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` all-or-nothing, durably: ``stage``, then ``install``
    (a crash leaves the old file, maybe with a stray ``.tmp``, or the new one; a full disk
    fails it before the rename, with the old file in place)."""
    stage(path, data)
    install(path)


def stage(path: str, data: bytes) -> None:
    """Write ``data`` to ``path.tmp`` and fsync it; changes nothing else.

    If writing fails (a full disk, say), the partial ``.tmp`` is removed
    again, best effort, and the error is raised.
    """
    tmp = path + ".tmp"
    unlink(tmp, missing_ok=True)
    try:
        create_file(tmp, data, sync=True)
    except BaseException:
        with contextlib.suppress(OSError):
            unlink(tmp, missing_ok=True)
        raise


def install(path: str) -> None:
    """Rename the staged ``path.tmp`` over ``path`` (the commit point of the replacement;
    it needs no new disk space), then fsync the directory."""
    rename(path + ".tmp", path)
    fsync_dir(os.path.dirname(path))


def append(fd: int, data: bytes, path: str, offset: int | None = None) -> None:
    """Append ``data`` to the ``O_APPEND`` file ``fd``, or at ``offset``, its end."""
    if _hook is not None:
        _hook("append", path, None)
    n = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
    if n != len(data):  # a short write: rare, but allowed to happen
        _write_all(fd, memoryview(data)[n:], None if offset is None else offset + n)


def overwrite(fd: int, data: bytes, offset: int, path: str) -> None:
    """Write ``data`` over bytes at ``offset`` of file ``fd`` (F5 padding). Not durable."""
    if _hook is not None:
        _hook("overwrite", path, (offset, len(data)))
    n = os.pwrite(fd, data, offset)
    if n != len(data):  # a short write: rare, but allowed to happen
        _write_all(fd, memoryview(data)[n:], offset + n)


def truncate(fd: int, size: int, path: str) -> None:
    """Cut the file ``fd`` back to ``size`` bytes (a journal after a failed append)."""
    _step("ftruncate", path)
    os.ftruncate(fd, size)


def fdatasync(fd: int, path: str, step: str = "fdatasync") -> None:
    """Make the data already written to ``fd`` durable. ``step``: its name for the fault
    hook (``"fsync"`` for a block file, as ``fsync_paths`` names it)."""
    _step(step, path)
    os.fdatasync(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of the dirty pages; do not wait


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing the dirty pages of a byte range of ``fd`` to disk; do not wait. Changes
    no content and promises nothing: a later fsync finds less left to write."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_FALLOC_FL_KEEP_SIZE = 1
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _falloc(fd: int, mode: int, offset: int, nbytes: int, path: str) -> bool:
    """fallocate(2); False if the filesystem cannot, OSError (errno kept) if it failed."""
    if _fallocate is None:
        return False
    if _fallocate(fd, mode, offset, nbytes) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_FALLOCATE:
        return False
    raise OSError(err, os.strerror(err), path)


def reserve_tail(fd: int, offset: int, nbytes: int, path: str) -> bool:
    """Give ``nbytes`` past ``offset`` of the append-only file ``fd`` disk space, keeping its
    size (the journal's room for its next records); False if the filesystem cannot.

    Changes no content. Not for blocks: ext4 may still need a block when a page
    of a reserved extent is first written through a mapping."""
    _step("reserve", path)
    return _falloc(fd, _FALLOC_FL_KEEP_SIZE, offset, nbytes, path)


_FSYNC_BATCH = 64  # files open at once: stays far below any descriptor limit


def fsync_paths(paths: list[str]) -> None:
    """Make each file of ``paths`` durable (fdatasync: data, and the metadata needed to read
    it back), pages dirtied through a shared mapping included. Writeback of a batch is
    started first (``sync_file_range``), so that the device works on all at once."""
    for i in range(0, len(paths), _FSYNC_BATCH):
        _fsync_batch(paths[i : i + _FSYNC_BATCH])


def _fsync_batch(paths: list[str]) -> None:
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        if len(fds) > 1 and _sync_file_range is not None:
            for fd in fds:
                _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
        for path, fd in zip(paths, fds, strict=True):
            _step("fsync", path)
            os.fdatasync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    _step("fsync_dir", path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename(src: str, dst: str) -> None:
    """Atomically rename ``src`` to ``dst``. Durable only after ``fsync_dir``."""
    _step("rename", dst)
    os.rename(src, dst)


def unlink(path: str, *, missing_ok: bool = False) -> bool:
    """Remove the file at ``path``; False if it was not there (``missing_ok``). Durable
    only after ``fsync_dir``."""
    _step("unlink", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return False
    return True


def mkdir(path: str) -> None:
    """Create directory ``path`` (must not exist). Durable after ``fsync_dir`` of its parent."""
    _step("mkdir", path)
    os.mkdir(path, 0o755)


def rmdir(path: str) -> None:
    """Remove the empty directory ``path``."""
    _step("rmdir", path)
    os.rmdir(path)


def allocate(path: str, nbytes: int) -> None:
    """Create ``path`` exclusively as a zero-filled file of ``nbytes`` (sparse). Not durable."""
    _step("create", path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _step("ftruncate", path)
        os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


def copy_file(src: str, dst: str, nbytes: int) -> None:
    """Create ``dst`` exclusively as a copy of the first ``nbytes`` of ``src``. Not durable."""
    _step("create", dst)
    fdst = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fsrc = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _step("copy", dst)
            done = 0
            while done < nbytes:
                try:
                    n = os.copy_file_range(fsrc, fdst, nbytes - done)
                except OSError as exc:  # pragma: no cover - filesystems without copy_file_range
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    n = 0
                if n == 0:  # EOF of a short source, or no copy_file_range: copy by hand
                    chunk = os.pread(fsrc, min(1 << 24, nbytes - done), done)
                    if not chunk:
                        break
                    os.pwrite(fdst, chunk, done)
                    n = len(chunk)
                done += n
            _step("ftruncate", dst)
            os.ftruncate(fdst, nbytes)
        finally:
            os.close(fsrc)
    finally:
        os.close(fdst)


_buffers: dict[int, type[ctypes.Array[ctypes.c_char]]] = {}


def store_rows(  # noqa: PLR0917 - the parts of one copy, all needed
    addr: int,
    srcs: tuple[int, ...],
    lanes: tuple[tuple[int, int], ...],
    row: int,
    n: int,
    path: str,
) -> None:
    """Copy ``n`` rows of each field from ``srcs`` to row ``row`` of the shared mapping at
    ``addr`` of block file ``path`` (field ``f`` at ``lanes[f]``: offset, row bytes). Not
    durable. Raw ``memmove``s over ranges the callers checked: for a row, far cheaper than
    a torch copy or a ``pwrite`` (which, on ext4, updates the inode at every call)."""
    f = 0
    for off, rb in lanes:
        at = off + row * rb
        if _hook is not None:
            _hook("write_rows", path, (at, n * rb))
        _memmove(addr + at, srcs[f], n * rb)
        f += 1  # noqa: SIM113 - enumerate() costs more in this loop


_ZEROS = memoryview(bytes(1 << 20))


def prefill(fd: int, offset: int, nbytes: int, path: str) -> None:
    """Write zeros at ``offset`` of block file ``fd``, past every row. Not durable.

    Changes no content a transaction or reader can see. It takes the pages'
    disk space (ENOSPC here, not a SIGBUS when rows are stored there through
    a mapping) and fills the page cache in bulk. A failure for lack of space
    gives the range back (``_give_back``).
    """
    if _hook is not None:
        _hook("write_rows", path, (offset, nbytes))
    start, end = offset, offset + nbytes
    try:
        while offset < end:
            offset += os.pwrite(fd, _ZEROS[: min(end - offset, len(_ZEROS))], offset)
    except OSError as exc:
        _give_back(fd, start, nbytes, path, exc)
        raise


_FALLOC_FL_PUNCH_HOLE = 2
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _give_back(fd: int, offset: int, nbytes: int, path: str, exc: OSError) -> None:
    """After a write into a block failed: name the file in ``exc`` (``pwrite`` does not);
    for lack of space, punch the range out. Best effort.

    On ext4 a page that a failed multi-page ``pwrite`` left behind can take
    a later ``pwrite`` without space, and a store into it through a mapping
    is then a SIGBUS (docs/design.md, item 16a). The range is past every
    visible row, or rows of the transaction the failure rolls back.
    """
    if exc.filename is None:
        exc.filename = path
    if exc.errno not in _NO_SPACE:
        return
    if _hook is not None:
        _hook("punch", path, (offset, nbytes))
    with contextlib.suppress(OSError):
        _falloc(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, nbytes, path)


_STORE_CHUNK = 1 << 16


def store(fd: int, src: int, nbytes: int, offset: int, path: str) -> None:
    """Write ``nbytes`` from address ``src`` at ``offset`` of block file ``fd``. Not durable.

    A ``pwrite`` straight from a contiguous CPU tensor's memory (the caller
    keeps it alive); mappings see the rows at once. In 64 KiB pieces: small
    folios, fast on this VM (docs/performance.md, "Large folios on this VM").
    A failure for lack of space gives the range back.
    """
    if _hook is not None:
        _hook("write_rows", path, (offset, nbytes))
    start, total = offset, nbytes
    try:
        while nbytes > _STORE_CHUNK:
            n = _STORE_CHUNK - offset % _STORE_CHUNK  # the pieces end on 64 KiB boundaries
            _pwrite(fd, src, n, offset)
            src, nbytes, offset = src + n, nbytes - n, offset + n
        _pwrite(fd, src, nbytes, offset)
    except OSError as exc:  # the transaction is rolled back: its rows may go
        _give_back(fd, start, total, path, exc)
        raise


def _pwrite(fd: int, src: int, nbytes: int, offset: int) -> None:
    buf_type = _buffers.get(nbytes)
    if buf_type is None:
        if len(_buffers) > 256:
            _buffers.clear()
        buf_type = _buffers[nbytes] = ctypes.c_char * nbytes
    n = os.pwrite(fd, buf_type.from_address(src), offset)
    if n != nbytes:  # a short write: rare, but allowed to happen
        view = memoryview(buf_type.from_address(src)).cast("B")
        while n < nbytes:
            n += os.pwrite(fd, view[n:], offset + n)


def write_lock_owner(fd: int, path: str, data: bytes) -> None:
    """Replace the contents of the held lock file ``path`` (open as ``fd``) with ``data``,
    unless it holds them already. Informational, not durable."""
    if os.pread(fd, len(data) + 1, 0) != data:  # the same: this process held it last
        _step("write", path)
        os.pwrite(fd, data, 0)
        _step("ftruncate", path)
        os.ftruncate(fd, len(data))
