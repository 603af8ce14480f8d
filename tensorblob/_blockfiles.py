"""Block files: fixed-size raw row arrays under ``blocks/`` (F8), as files.

Block ``id`` lives in ``blocks/<id as 16 hex digits>`` and holds exactly
``Meta.block_bytes`` bytes, no header: the ``block_size`` rows of each field,
row-major, native byte order, one field after the other (at ``Field.offset``);
a blob has one field, at offset 0.
``BlockFiles`` creates, copies, fsyncs, checksums, lists and deletes them;
it never maps one (that is ``_blocks.BlockStore``), so recovery and the
operator tools that use it need neither torch nor tensordict. Every change
goes through ``_durable``.
"""

from __future__ import annotations

import os
import stat
import zlib

from . import _durable
from ._meta import Meta
from .errors import CorruptBlobError, SnapshotGoneError

BLOCKS = "blocks"

_CRC_CHUNK = 1 << 20


def crc_file(path: str, start: int, stop: int, seed: int = 0, fd: int = -1) -> int:
    """CRC-32 of bytes ``[start, stop)`` of the file ``path`` (read through ``fd`` if it is
    open on it for reading), continuing from ``seed``.

    Raises CorruptBlobError if the file ends before ``stop``.
    """
    own = fd < 0
    if own:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if stop - start <= _CRC_CHUNK:  # the common case: one read, no buffer to clear
            data = os.pread(fd, stop - start, start)
            if len(data) == stop - start:
                return zlib.crc32(data, seed)
        buf = memoryview(bytearray(min(max(stop - start, 1), _CRC_CHUNK)))
        crc, pos = seed, start
        while pos < stop:
            n = os.preadv(fd, [buf[: min(len(buf), stop - pos)]], pos)
            if n == 0:
                raise _short(path, pos, stop)
            crc = zlib.crc32(buf[:n], crc)
            pos += n
        return crc
    finally:
        if own:
            os.close(fd)


def _short(path: str, pos: int, stop: int) -> CorruptBlobError:
    return CorruptBlobError(
        f"block file {path!r} ends at byte {pos}, before its committed rows "
        f"(which need {stop} bytes): it was truncated or damaged",
        path=path,
        reason="block-short",
    )


def sum_mismatch(  # noqa: PLR0917 - the facts of one check, all needed
    meta: Meta,
    bid: int,
    first_row: int,
    rows: int,
    got: tuple[int, ...],
    want: tuple[int, ...],
) -> str | None:
    """The one check of a block's rows against their checksum (F3): what is wrong, or None.

    ``got`` is the CRC-32 of each field's first ``rows`` rows in the block as
    read now, ``want`` those recorded when they became durable; ``first_row``
    is the blob row of the block's row 0, for the message, which names the
    fields that differ (for a TensorDB).
    """
    if got == want:
        return None
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    crcs = ", ".join(f"{got[i]:08x}, expected {want[i]:08x}" for i in bad)
    which = ""
    if meta.db:
        which = "field(s) " + ", ".join(repr(meta.fields[i].name) for i in bad) + " of "
    return (
        f"{which}block {block_name(bid)} (rows {first_row} to {first_row + rows - 1}): its "
        f"bytes do not match the crc32 recorded when they became durable ({crcs}): they "
        "changed on disk (bit rot, a bad sector, or a write that bypassed tensorblob)"
    )


def block_name(bid: int) -> str:
    return f"{bid:016x}"


_HEX = frozenset("0123456789abcdef")


def parse_block_name(name: str) -> int | None:
    """The id of a block file name (exactly 16 lowercase hex digits), else None."""
    if len(name) == 16 and _HEX.issuperset(name):
        return int(name, 16)
    return None


def gone(root: str, home: tuple[int, int] | None = None) -> bool:
    """The blob once at ``root`` is no longer there: ``root`` is not a directory or, given
    the ``home`` it was (``BlockFiles.home_of``), another one. The one rule by which
    readers, ``refresh()`` and ``follow()`` tell a blob deleted, moved or created again
    from a damaged one."""
    try:
        st = os.stat(root)
    except OSError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        return True
    return home is not None and (st.st_dev, st.st_ino) != home


class BlockFiles:
    """The block files of one blob: paths, sizes, creation, copies, fsync, checksums."""

    def __init__(self, root: str, meta: Meta) -> None:
        self.dir = os.path.join(root, BLOCKS)
        self.meta = meta
        self.nbytes = meta.block_bytes
        # (offset, row bytes) of each field, for checksums
        self._spans = tuple((f.offset, f.row_bytes) for f in meta.fields)
        # Block files a writer holds open for reading and writing (its write
        # window): fsynced and read through that descriptor.
        self.lent: dict[int, int] = {}
        # A reader's blob directory, as (device, inode), found before it read the
        # blob's meta: a blob deleted and created again numbers its block files
        # from 0 again, and the reader must not read the new blob's files as its
        # own (``gone``). None: not pinned (a writer: its lock pins the blob).
        self.home: tuple[int, int] | None = None

    @staticmethod
    def home_of(root: str) -> tuple[int, int]:
        """(device, inode) of the directory ``root`` (``home``); OSError if there is none."""
        st = os.stat(root)
        return st.st_dev, st.st_ino

    def gone(self) -> bool:
        """The blob is no longer at its path (``gone``, with the pinned ``home``)."""
        return gone(os.path.dirname(self.dir), self.home)

    def _check_home(self, path: str) -> None:
        """Raise SnapshotGoneError if a pinned reader's blob is gone: ``path``, just
        opened, may belong to another blob."""
        if self.home is not None and self.gone():
            raise SnapshotGoneError(
                f"rows of this reader's snapshot in {path!r} cannot be read: the blob was "
                "deleted, moved or created again since the reader opened it, and it had "
                "not mapped them. Open the blob again to read what is there now"
            )

    def path(self, bid: int) -> str:
        return f"{self.dir}/{bid:016x}"  # block_name(), inlined: this is on the write path

    def allocate(self, bid: int) -> None:
        """Create block ``bid`` zero-filled. Not durable until ``sync``.

        The caller knows ``bid`` is referenced by no committed state, so a file
        already there is the orphan of a transaction lost to a power cut
        (whose deletion never reached the disk): it is replaced.
        """
        path = self.path(bid)
        if os.path.exists(path):
            _durable.unlink(path)
        _durable.allocate(path, self.nbytes)

    def check_file(self, bid: int) -> None:
        """Raise CorruptBlobError unless block ``bid``'s file exists with the right size."""
        self._check_size(self.path(bid))

    def check_path(self, path: str) -> None:
        """Raise CorruptBlobError unless ``path`` is a block file of the right size."""
        self._check_size(path)

    def _check_size(self, path: str) -> None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            self._check_home(path)
            raise CorruptBlobError(
                f"block file {path!r} is missing", path=path, reason="block-missing"
            ) from None
        if size != self.nbytes:
            raise CorruptBlobError(
                f"block file {path!r} has {size} bytes, expected {self.nbytes}",
                path=path,
                reason="block-size",
            )

    def copy(self, src: int, dst: int) -> None:
        """Create block ``dst`` as a copy of block ``src`` (copy-on-write). Not durable."""
        self.copy_foreign(self.path(src), dst)

    def copy_foreign(self, src_path: str, dst: int) -> None:
        """Create block ``dst`` as a copy of the block file ``src_path`` (maybe another blob's)."""
        self._check_size(src_path)
        if os.path.exists(self.path(dst)):  # a stale orphan, as in allocate()
            _durable.unlink(self.path(dst))
        _durable.copy_file(src_path, self.path(dst), self.nbytes)

    def sync(self, bids: set[int] | list[int], *, new_files: bool) -> None:
        """Make the listed blocks durable (and their directory entries, if ``new_files``)."""
        paths = []
        for bid in sorted(bids):
            fd = self.lent.get(bid)
            if fd is None:
                paths.append(self.path(bid))
            else:
                _durable.fdatasync(fd, self.path(bid), "fsync")
        _durable.fsync_paths([p for p in paths if os.path.exists(p)])
        if new_files:
            _durable.fsync_dir(self.dir)

    def crc(
        self, bid: int, start: int, stop: int, seeds: tuple[int, ...] | None = None
    ) -> tuple[int, ...]:
        """The CRC-32 of each field's rows ``[start, stop)`` in block ``bid``, continuing
        from ``seeds`` (F3).

        Read with ``pread``, never through a mapping, so that a block file
        shortened on disk raises CorruptBlobError, not SIGBUS.
        """
        path, seeds, fd = self.path(bid), seeds or (0,) * len(self._spans), self.lent.get(bid, -1)
        return tuple(
            crc_file(path, off + start * rb, off + stop * rb, seed, fd)
            for (off, rb), seed in zip(self._spans, seeds, strict=True)
        )

    def read_rows(self, bid: int, f: int, start: int, stop: int, dst: memoryview) -> None:
        """Copy rows ``[start, stop)`` of field ``f`` of block ``bid`` into ``dst`` (their
        bytes: writable, contiguous) with ``pread``, mapping nothing.

        For reads over more blocks than a handle keeps mapped: mapping them would
        evict, at every such read, the blocks the next one needs first
        (``BlockStore.span_into``). Raises CorruptBlobError if the file is
        missing or ends before the rows. A reader's caller checks that the
        files were this blob's (``_check_home``) once it has read them all.
        """
        off, rb = self._spans[f]
        path, fd = self.path(bid), self.lent.get(bid, -1)
        own = fd < 0
        if own:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._check_home(path)
                raise CorruptBlobError(
                    f"block file {path!r} is missing", path=path, reason="block-missing"
                ) from None
        try:
            view, base, end = memoryview(dst).cast("B"), off + start * rb, off + stop * rb
            pos = base
            while pos < end:
                n = os.preadv(fd, [view[pos - base :]], pos)
                if n == 0:
                    raise _short(path, pos, end)
                pos += n
        finally:
            if own:
                os.close(fd)

    def delete(self, bid: int) -> bool:
        """Delete block ``bid``'s file; False if it was gone already."""
        return _durable.unlink(self.path(bid), missing_ok=True)

    def list_ids(self) -> tuple[set[int], list[str]]:
        """Return the block ids present on disk and any names that are not block names."""
        ids: set[int] = set()
        other: list[str] = []
        for name in os.listdir(self.dir):
            bid = parse_block_name(name)
            if bid is None:
                other.append(name)
            else:
                ids.add(bid)
        return ids, other
