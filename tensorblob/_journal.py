"""The ``journal``: CRC-framed msgpack records appended since the last checkpoint (F4-F7).

A journal has a generation of its own and names the manifest generation its
records apply to, its base: the same number after a checkpoint, the older
manifest's after a rotation (F7). A writer creates a new, empty journal at
every checkpoint (temp + fsync + rename + fsync dir), a new journal carrying
its session at every rotation, and appends one frame per transaction with a
single ``write``. A frame exists once
it is complete and its CRC checks; a torn or garbage tail is simply where the
journal ends.
"""

from __future__ import annotations

import errno
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from . import _durable, _format, _records
from .errors import CorruptBlobError, TensorBlobError

JOURNAL = "journal"


@dataclass
class JournalImage:
    """A journal as read from disk: header, valid records, and where they end."""

    gen: int
    salt: int
    base: int  # the manifest generation the records apply to (F7)
    records: list[dict[str, Any]] = field(default_factory=list)
    end: int = 0
    size: int = 0
    version: int = _format.WRITE_VERSION  # of the header: a writer upgrades version 1
    # Frames with a valid CRC in the tail (``_format.intact_frames``): damage, not a
    # tear, unless a power cut explains them (``_snapshot.tail_is_damage``).
    lost: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def torn(self) -> bool:
        """True if bytes other than zero padding follow the last valid frame (a torn or
        garbage tail; ``size`` leaves trailing zeros out, F5)."""
        return self.end != self.size


def encode_journal(
    uuid: bytes,
    gen: int,
    salt: int,
    *,
    closed: bool,
    base: int | None = None,
    logged: bool = False,
) -> bytes:
    """A journal file with no commits; with ``closed``, one close marker (a clean blob).

    With a ``base`` older than ``gen``, a rotated journal (version 3): its
    records apply to the manifest of generation ``base``. With ``logged``,
    version 5: its records may carry logged rows (F6 ``r``).
    """
    header: dict[str, Any] = {"uuid": uuid, "gen": gen, "salt": salt}
    version = _format.LOG_VERSION if logged else _format.WRITE_VERSION
    if base is not None and base != gen:
        header["base"], version = base, max(version, 3)
    data = _format.encode_file(_format.MAGIC_JOURNAL, header, version)
    if closed:
        marker = {**_records.sync_record(True), "q": 1}
        data += _format.encode_frame(salt, marker)
    return data


def stage_journal(
    root: str, uuid: bytes, gen: int, *, closed: bool = False, logged: bool = False
) -> int:
    """Stage an empty journal following ``gen`` as ``journal.tmp``; return its salt.

    With ``closed``, the new journal holds one close marker: a clean blob;
    with ``logged``, it is version 5 (``encode_journal``). ``_durable.install``
    puts it in place.
    """
    salt = secrets.randbits(32)
    data = encode_journal(uuid, gen, salt, closed=closed, logged=logged)
    _durable.stage(os.path.join(root, JOURNAL), data)
    return salt


def stage_rotation(root: str, uuid: bytes, gen: int, *, base: int, boot: str, length: int) -> int:
    """Stage a rotated journal (F7.6) as ``journal.tmp``; return its salt.

    The new journal (generation ``gen``, over the manifest of generation
    ``base``) holds two frames: an open marker with ``boot``, and the append
    record to ``length`` rows carried from the old journal. Nothing changes
    until ``_durable.install`` renames it into place (the rotation's commit
    point); a full disk fails here with the old journal in place.
    """
    salt = secrets.randbits(32)
    data = encode_journal(uuid, gen, salt, closed=False, base=base)
    data += _format.encode_frame(salt, {**_records.open_record(boot), "q": 1})
    data += _format.encode_frame(salt, {**_records.append_record(length, carried=True), "q": 2})
    _durable.stage(os.path.join(root, JOURNAL), data)
    return salt


_DECODED = _format.Decoded()  # a reader reopening a blob with no commit since


def read_journal(root: str, uuid: bytes) -> JournalImage:
    path = os.path.join(root, JOURNAL)
    what = f"journal {path!r}"
    try:
        data = _format.read_file(path)
    except FileNotFoundError:
        raise CorruptBlobError(
            f"{what} is missing; run `tensorblob recover`", path=path, reason="missing"
        ) from None
    j = _DECODED.get(path, data, uuid)
    if j is None:
        j = _decode_grown(path, data, uuid, what) or _decode_journal(data, uuid, what, path)
        _DECODED.put(path, data, j, uuid)
    # Records are only ever read: the image may share them, not the list.
    return JournalImage(j.gen, j.salt, j.base, list(j.records), j.end, j.size, j.version, j.lost)


def _decode_grown(path: str, data: bytes, uuid: bytes, what: str) -> JournalImage | None:
    """The journal last decoded at ``path`` with the frames written after it since, if
    ``data`` holds its bytes up to its last valid frame (design.md, item 22): frames
    are decoded from where the valid ones ended, in order, as a whole decode does."""
    last = _DECODED.last(path, uuid)
    if last is None:
        return None
    old, j = last
    if not data.startswith(old[: j.end]):
        return None
    records, end = _format.decode_frames(data, j.end, j.salt, len(j.records) + 1)
    for rec in records:
        _records.check_record(rec, what)
    size = _format.content_end(data, end)
    lost = _lost(data, end, size, j.salt)
    return JournalImage(j.gen, j.salt, j.base, j.records + records, end, size, j.version, lost)


def _lost(data: bytes, end: int, size: int, salt: int) -> list[dict[str, Any] | None]:
    """The intact frames in a torn tail (``bytes [end, size)``; none without a tail)."""
    return _format.intact_frames(data[:size], end, salt) if size > end else []


def _decode_journal(data: bytes, uuid: bytes, what: str, path: str) -> JournalImage:
    header, start = _format.decode_header(_format.MAGIC_JOURNAL, data, what)
    _records.check_journal_header(header, what)
    if header["uuid"] != uuid:
        raise CorruptBlobError(
            f"{what} belongs to another blob (uuid mismatch)", path=path, reason="foreign"
        )
    records, end = _format.decode_frames(data, start, header["salt"])
    for rec in records:
        _records.check_record(rec, what)
    version = _format.header_version(data)
    gen = header["gen"]
    base = header.get("base", gen)
    size = _format.content_end(data, end)
    lost = _lost(data, end, size, header["salt"])
    return JournalImage(gen, header["salt"], base, records, end, size, version, lost)


@dataclass
class JournalScan:
    """A journal as found by ``scan_journal``: what is readable, and where damage is.

    The tools' view (``tensorblob check``, ``recover``): never an exception
    for damage, but the header's state, the valid frames with their offsets,
    the first record that passes its CRC but is invalid (F6), and intact
    frames found past the point where the valid ones end.
    """

    present: bool = False
    size: int = 0
    error: str = ""  # the header is unusable (damaged, or another blob's): nothing can be read
    foreign: bool = False
    gen: int = 0
    base: int = 0  # the manifest generation its records apply to (F7)
    salt: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # where each valid frame starts
    end: int = 0  # just past the last valid frame
    bad_index: int | None = None  # first record that passes its CRC but is invalid (F6)
    bad_reason: str = ""
    lost: list[dict[str, Any] | None] = field(default_factory=list)  # intact frames in the tail

    def offset(self, i: int) -> int:
        return self.offsets[i] if i < len(self.offsets) else self.end

    @property
    def commits(self) -> int:
        return sum(r["t"] in _records.COMMITS for r in self.records)

    def image(self, count: int) -> JournalImage:
        """The journal cut after its first ``count`` records, as ``read_journal`` gives it."""
        return JournalImage(
            self.gen, self.salt, self.base, self.records[:count], self.offset(count), self.size
        )


def scan_journal(root: str, uuid: bytes) -> JournalScan:
    """Read the journal as ``read_journal`` does, but report damage instead of raising it."""
    js = JournalScan()
    try:
        data = _format.read_file(os.path.join(root, JOURNAL))
    except FileNotFoundError:
        return js
    except OSError as exc:
        js.present, js.error = True, f"cannot be read ({exc})"
        return js
    js.present, js.size = True, len(data)  # until the frames say where the content ends
    try:
        header, start = _format.decode_header(_format.MAGIC_JOURNAL, data, "journal")
        _records.check_journal_header(header, "journal")
    except CorruptBlobError as exc:
        if exc.reason == "wrong-magic":
            js.error = "it does not start with TBLBJRNL (wrong magic)"
        else:
            js.error = exc.detail or str(exc)
        return js
    if header["uuid"] != uuid:
        js.foreign, js.error = True, "it belongs to another blob (its uuid differs from meta's)"
        return js
    js.gen, js.salt = header["gen"], header["salt"]
    js.base = header.get("base", js.gen)
    js.records, js.end = _format.decode_frames(data, start, js.salt)
    js.size = _format.content_end(data, js.end)
    data = data[: js.size]  # the padding holds no frame
    js.offsets = _format.frame_offsets(data, start, len(js.records))
    for i, rec in enumerate(js.records):  # what read_journal checks, record by record
        try:
            _records.check_record(rec, f"record at offset {js.offsets[i]}")
        except CorruptBlobError as exc:
            js.bad_index, js.bad_reason = i, str(exc)
            break
    js.lost = _lost(data, js.end, js.size, js.salt)
    return js


# Disk space the journal takes ahead of its end, so that appends never meet a
# full disk: far more than the records of a journal between two checkpoints.
RESERVE_BYTES = 64 << 10
# Zeros written ahead of the frames of records with logged rows (F5, F6 ``r``),
# which then overwrite them in place: an fdatasync that changes no file size
# or extent costs one device flush and no filesystem journal commit (here
# about 10,000 per second against 5,500 for appends).
PAD_BYTES = 256 << 10


def sync_room(nblocks: int) -> int:
    """Bytes a sync record with the checksums of ``nblocks`` blocks can take, at most (F6)."""
    return 64 + 24 * nblocks


class JournalWriter:
    """Appends frames to the journal through the durable seam.

    Room for the frames is reserved on disk before they are written
    (``_durable.reserve_tail``), together with room the caller asks to keep
    (``keep``: the close record a durable point will append later), so a
    full disk fails an append before any byte is written. If writing fails
    all the same, the journal is cut back to its last whole frame: the
    record is then simply not there (not committed), and the writer stays
    usable. Only if that fails too is the writer ``broken``: whether the
    record is on disk is then for the next open to find out.
    """

    def __init__(
        self, root: str, salt: int, seq: int, end: int | None = None, logged: int = 0
    ) -> None:
        self.path = os.path.join(root, JOURNAL)
        self.salt = salt
        self.seq = seq  # frames already in the journal
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        # Records with logged rows (F6 ``r``) need a journal of version 5.
        header = os.pread(self.fd, _format.HEADER_SIZE, 0)
        self.can_log = _format.header_version(header) >= _format.LOG_VERSION
        st = os.fstat(self.fd)
        self.phys = st.st_size  # the file's size: past ``size``, zero padding (F5)
        self.size = self.phys if end is None else end  # just past the last frame
        # Bytes below this offset have disk space: room an earlier writer of
        # this journal reserved is still allocated (a journal has no holes).
        self.room = max(self.phys, st.st_blocks * 512)
        self.reservable = True  # False: the filesystem cannot reserve (appends may fail)
        self.broken = False
        self.logged = logged  # bytes of logged rows (F6 ``r``) in this journal's frames

    @property
    def padded(self) -> bool:
        """Frames are written in place, over zero padding (F5)."""
        return self.phys > self.size

    def make_room(self, nbytes: int, pad: bool = False) -> None:
        """Reserve disk space for ``nbytes`` past the end, unless there is room already.

        ``pad`` (or a journal padded already): as zeros that the frames will
        overwrite in place, PAD_BYTES at a time.
        """
        need = self.size + nbytes
        if pad or self.phys > self.size:
            if need > self.phys:
                more = max(need, self.phys + PAD_BYTES) - self.phys
                try:
                    _durable.append(self.fd, bytes(more), self.path, self.phys)
                finally:
                    self.phys = os.fstat(self.fd).st_size
                self.room = max(self.room, self.phys)
            return
        if need > self.room and self.reservable:
            n = max(nbytes, RESERVE_BYTES)
            try:
                ok = _durable.reserve_tail(self.fd, self.size, n, self.path)
            except OSError as exc:  # a nearly full disk: take just what is needed
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or n == nbytes:
                    raise
                n = nbytes
                ok = _durable.reserve_tail(self.fd, self.size, n, self.path)
            if ok:
                self.room = self.size + n
            else:
                self.reservable = False

    def append(self, record: dict[str, Any], keep: int = 0, *, pad: bool = False) -> None:
        """Append ``record`` as the next frame, numbered ``q`` (F4, F5), leaving ``keep``
        bytes of room after it; ``pad``: in place, over zero padding (``make_room``)."""
        record["q"] = self.seq + 1
        frame = _format.encode_frame(self.salt, record)
        if len(frame) > _format.MAX_FRAME:
            raise TensorBlobError(f"a transaction of {len(frame)} journal bytes is too large")
        self._write(frame, keep, pad)
        rows = record.get("r")
        if rows:
            self.logged += len(rows)

    def append_rows(self, n: int, keep: int = 0) -> None:
        """Append the append record ``{"t": "a", "n": n}`` (F6): ``append``, faster."""
        self._write(_format.encode_append_frame(self.salt, n, self.seq + 1), keep)

    def _write(self, frame: bytes, keep: int, pad: bool = False) -> None:
        self.make_room(len(frame) + keep, pad)
        inplace = self.phys > self.size
        try:
            if inplace:
                _durable.overwrite(self.fd, frame, self.size, self.path)
            else:
                _durable.append(self.fd, frame, self.path, self.size)
        except BaseException:
            self._restore(len(frame), inplace)
            raise
        self.seq += 1
        self.size += len(frame)
        self.phys = max(self.phys, self.size)

    def _restore(self, n: int, inplace: bool) -> None:
        """After a failed write of an ``n``-byte frame: put the journal back to its last
        whole frame (the padding back to zeros, or the file cut), or give up."""
        try:
            if inplace:
                _durable.overwrite(self.fd, bytes(n), self.size, self.path)
            elif os.fstat(self.fd).st_size != self.size:
                _durable.truncate(self.fd, self.size, self.path)
        except BaseException:
            self.broken = True

    def sync(self) -> None:
        _durable.fdatasync(self.fd, self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
