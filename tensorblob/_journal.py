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

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from . import _durable, _format
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

    @property
    def torn(self) -> bool:
        """True if bytes follow the last valid frame (a torn or garbage tail)."""
        return self.end != self.size


def encode_journal(
    uuid: bytes, gen: int, salt: int, *, closed: bool, base: int | None = None
) -> bytes:
    """A journal file with no commits; with ``closed``, one close marker (a clean blob).

    With a ``base`` older than ``gen``, a rotated journal (version 3): its
    records apply to the manifest of generation ``base``.
    """
    header: dict[str, Any] = {"uuid": uuid, "gen": gen, "salt": salt}
    version = _format.WRITE_VERSION
    if base is not None and base != gen:
        header["base"], version = base, 3
    data = _format.encode_file(_format.MAGIC_JOURNAL, header, version)
    if closed:
        marker = {"t": _format.REC_SYNC, "c": True, "q": 1}
        data += _format.encode_frame(salt, marker)
    return data


def create_journal(root: str, uuid: bytes, gen: int, *, closed: bool = False) -> int:
    """Durably replace the journal with an empty one following ``gen``; return its salt.

    With ``closed``, the new journal holds one close marker: a clean blob.
    """
    salt = secrets.randbits(32)
    data = encode_journal(uuid, gen, salt, closed=closed)
    _durable.write_atomic(os.path.join(root, JOURNAL), data)
    return salt


def rotate_journal(root: str, uuid: bytes, gen: int, *, base: int, boot: str, length: int) -> int:
    """Durably replace the journal with a rotated one (F7.6); return its salt.

    The new journal (generation ``gen``, over the manifest of generation
    ``base``) holds two frames: an open marker with ``boot``, and the append
    record to ``length`` rows carried from the old journal.
    """
    salt = secrets.randbits(32)
    data = encode_journal(uuid, gen, salt, closed=False, base=base)
    data += _format.encode_frame(salt, {"t": _format.REC_OPEN, "b": boot, "q": 1})
    data += _format.encode_frame(salt, {"t": _format.REC_APPEND, "n": length, "p": True, "q": 2})
    _durable.write_atomic(os.path.join(root, JOURNAL), data)
    return salt


def read_journal(root: str, uuid: bytes) -> JournalImage:
    path = os.path.join(root, JOURNAL)
    what = f"journal {path!r}"
    try:
        data = _format.read_file(path)
    except FileNotFoundError:
        raise CorruptBlobError(f"{what} is missing; run `tensorblob recover`") from None
    header, start = _format.decode_header(_format.MAGIC_JOURNAL, data, what)
    _format.check_journal_header(header, what)
    if header["uuid"] != uuid:
        raise CorruptBlobError(f"{what} belongs to another blob (uuid mismatch)")
    records, end = _format.decode_frames(data, start, header["salt"])
    for rec in records:
        _format.check_record(rec, what)
    version = _format.header_version(data)
    gen = header["gen"]
    base = header.get("base", gen)
    return JournalImage(gen, header["salt"], base, records, end, len(data), version)


class JournalWriter:
    """Appends frames to the journal through the durable seam."""

    def __init__(self, root: str, salt: int, seq: int) -> None:
        self.path = os.path.join(root, JOURNAL)
        self.salt = salt
        self.seq = seq  # frames already in the journal
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as the next frame, numbered ``q`` (F4, F5)."""
        record["q"] = self.seq + 1
        frame = _format.encode_frame(self.salt, record)
        if len(frame) > _format.MAX_FRAME:
            raise TensorBlobError(f"a transaction of {len(frame)} journal bytes is too large")
        _durable.append(self.fd, frame, self.path)
        self.seq += 1
        self.size += len(frame)

    def append_rows(self, n: int) -> None:
        """Append the append record ``{"t": "a", "n": n}`` (F6): ``append``, faster."""
        frame = _format.encode_append_frame(self.salt, n, self.seq + 1)
        _durable.append(self.fd, frame, self.path)
        self.seq += 1
        self.size += len(frame)

    def sync(self) -> None:
        _durable.fdatasync(self.fd, self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
