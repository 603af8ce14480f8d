"""The byte format, and nothing but the byte format: magic, version, framing, CRC.

Pure functions, but for ``read_file``, the one read of a whole small file
that the readers of meta, manifest and journal share. docs/format.md is the
normative description; the rule numbers cited here (F1, F2, ...) refer to it.

Every file that is not a block starts with the same 20-byte header (F1)::

    offset size  field
    0      8     magic         b"TBLBMETA" | b"TBLBMANI" | b"TBLBJRNL"
    8      2     version       u16 little-endian, format version (1 to 4)
    10     2     reserved      u16, zero
    12     4     body_len      u32, length of the msgpack body that follows
    16     4     body_crc      u32, zlib.crc32(body)

The journal continues after its body with frames (F4)::

    [u32 payload_len][u32 crc32(salt_le32 || payload)][payload: msgpack map]
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import msgpack

from ._records import RECORD_TYPES, append_record, corrupt
from .errors import CorruptBlobError, NotABlobError, UnsupportedVersionError

# 2: append records, boot ids in open records only; 3: a rotated journal, whose
# header names the manifest generation it applies to ("base"), which a reader
# of version 2 would take for damage; 4: the meta of a TensorDB (its fields),
# which a reader of version 3 must refuse (docs/format.md); 5: a journal that
# may hold rows logged in its records and zero padding (F5, F6 ``r``), which
# an older reader would misread after a power cut. Every file is written as
# version 2 except a rotated journal, a TensorDB's meta and a sync="full"
# writer's journal.
FORMAT_VERSION = 5  # the newest version this library reads
WRITE_VERSION = 2  # the version of the files it writes, but these three:
DB_VERSION = 4  # a TensorDB's meta
LOG_VERSION = 5  # a journal with logged rows
MAGIC_META = b"TBLBMETA"
MAGIC_MANIFEST = b"TBLBMANI"
MAGIC_JOURNAL = b"TBLBJRNL"

_HEADER = struct.Struct("<8sHHII")
HEADER_SIZE = _HEADER.size  # 20
_FRAME = struct.Struct("<II")
FRAME_HEADER_SIZE = _FRAME.size  # 8
MAX_FRAME = 1 << 26  # a frame larger than this is garbage, not a record (F5)


def read_file(path: str) -> bytes:
    """The whole file at ``path``: ``open(path, "rb").read()`` for half the cost."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_packer = msgpack.Packer(use_bin_type=True)  # reused: packb() builds a Packer per call


def pack(obj: Any) -> bytes:
    return _packer.pack(obj)


def _unpack(body: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated classes
        detail = f"body is not valid msgpack ({exc})"
        raise CorruptBlobError(f"{what}: {detail}", reason="body", detail=detail) from None


def encode_file(magic: bytes, body: dict[str, Any], version: int = WRITE_VERSION) -> bytes:
    payload = pack(body)
    return _HEADER.pack(magic, version, 0, len(payload), zlib.crc32(payload)) + payload


def decode_header(magic: bytes, data: bytes, what: str) -> tuple[dict[str, Any], int]:
    """Decode a header and its body; return the body and the offset just past it (F1-F3)."""
    if len(data) < HEADER_SIZE:
        if magic == MAGIC_META and data[: len(magic)] != magic[: len(data)]:
            raise NotABlobError(f"{what}: not a tensorblob meta file")
        corrupt(what, f"file is truncated ({len(data)} bytes, header needs 20)", "truncated")
    got_magic, version, _reserved, body_len, body_crc = _HEADER.unpack_from(data)
    if got_magic != magic:
        if magic == MAGIC_META:
            raise NotABlobError(f"{what}: not a tensorblob meta file (magic {got_magic!r})")
        corrupt(what, f"wrong magic {got_magic!r}, expected {magic!r}", "wrong-magic")
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"{what}: format version {version} is newer than this library reads "
            f"({FORMAT_VERSION}); upgrade tensorblob"
        )
    if version < 1:
        corrupt(what, f"invalid format version {version}", "bad-version")
    end = HEADER_SIZE + body_len
    if len(data) < end:
        corrupt(what, f"body is truncated ({len(data) - HEADER_SIZE}/{body_len})", "truncated")
    body = data[HEADER_SIZE:end]
    if zlib.crc32(body) != body_crc:
        corrupt(what, "checksum mismatch, the file is damaged", "checksum")
    obj = _unpack(body, what)
    if not isinstance(obj, dict):
        corrupt(what, "body is not a map", "body")
    return obj, end


def header_version(data: bytes) -> int:
    """The version field of a header that ``decode_header`` has accepted."""
    return int(_HEADER.unpack_from(data)[1])


def decode_file(magic: bytes, data: bytes, what: str) -> dict[str, Any]:
    obj, end = decode_header(magic, data, what)
    if end != len(data):
        corrupt(what, f"{len(data) - end} unexpected bytes after the body", "trailing")
    return obj


# -- journal frames ---------------------------------------------------------


_salt_crcs: dict[int, int] = {}


def encode_frame(salt: int, record: dict[str, Any]) -> bytes:
    payload = _packer.pack(record)
    seed = _salt_crcs.get(salt)
    if seed is None:
        seed = _salt_crcs[salt] = zlib.crc32(struct.pack("<I", salt))
        if len(_salt_crcs) > 64:  # salts change at every checkpoint: keep a few
            _salt_crcs.clear()
            _salt_crcs[salt] = seed
    return _FRAME.pack(len(payload), zlib.crc32(payload, seed)) + payload


_APPEND_HEAD = b"\x83\xa1t\xa1a\xa1n"  # msgpack of {"t": "a", "n": ...


def encode_append_frame(salt: int, n: int, q: int) -> bytes:
    """``encode_frame(salt, {**append_record(n), "q": q})``, byte for byte, faster.

    The commit record of every single-row append under ``"normal"``: this is
    on the hottest write path, and packing the two integers alone saves most
    of the cost of packing the map.
    """
    payload = _APPEND_HEAD + _packer.pack(n) + b"\xa1q" + _packer.pack(q)
    seed = _salt_crcs.get(salt)
    if seed is None:
        return encode_frame(salt, {**append_record(n), "q": q})
    return _FRAME.pack(len(payload), zlib.crc32(payload, seed)) + payload


def decode_frames(
    data: bytes | memoryview, start: int, salt: int, q: int = 1
) -> tuple[list[dict[str, Any]], int]:
    """Decode frames from ``start``, the first with sequence number ``q``; stop at the
    first one that is not valid (F5).

    Returns the records and the offset just past the last valid frame. A frame
    is valid iff its length is in ``1..MAX_FRAME``, it lies wholly inside
    ``data``, its CRC (seeded with the journal's salt) matches, its payload is
    a msgpack map with a known ``t`` and its ``q`` is one more than the
    previous frame's (the first frame's is ``q``).
    """
    records: list[dict[str, Any]] = []
    append = records.append
    salt_crc = zlib.crc32(struct.pack("<I", salt))
    if not isinstance(data, bytes):
        data = bytes(data)
    unpack_from, crc32, unpackb = _FRAME.unpack_from, zlib.crc32, msgpack.unpackb
    pos, size = start, len(data)
    while pos + FRAME_HEADER_SIZE <= size:
        length, crc = unpack_from(data, pos)
        end = pos + FRAME_HEADER_SIZE + length
        if length == 0 or length > MAX_FRAME or end > size:
            break
        payload = data[pos + FRAME_HEADER_SIZE : end]
        if crc32(payload, salt_crc) != crc:
            break
        try:
            rec = unpackb(payload, raw=False, strict_map_key=True)
        except Exception:
            break
        if type(rec) is not dict or rec.get("q") != q or rec.get("t") not in RECORD_TYPES:
            break
        append(rec)
        q += 1
        pos = end
    return records, pos


def frame_offsets(data: bytes, start: int, count: int) -> list[int]:
    """Where each of the first ``count`` frames from ``start`` begins (they were decoded)."""
    offsets, pos = [], start
    for _ in range(count):
        offsets.append(pos)
        pos += FRAME_HEADER_SIZE + _FRAME.unpack_from(data, pos)[0]
    return offsets


TAIL_SCAN_BUDGET = 64 << 20  # bytes of CRC work spent looking for intact frames in a tail


class Decoded:
    """The last value decoded from the file at each path, by the file's bytes.

    Decoding and checking a metadata file is a function of its bytes (and of
    ``key``: what it must match), so a file read again with the same bytes is
    not decoded again (docs/design.md, item 22): readers reopen the same blob
    again and again. The bytes are always read, so a changed file is always
    decoded. At most ``limit`` paths are kept.
    """

    def __init__(self, limit: int = 64) -> None:
        self._last: dict[str, tuple[bytes, Any, Any]] = {}
        self._limit = limit

    def get(self, path: str, data: bytes, key: Any = None) -> Any:
        """The value decoded from exactly ``data`` at ``path`` (with ``key``), else None."""
        hit = self._last.get(path)
        return hit[2] if hit is not None and hit[0] == data and hit[1] == key else None

    def last(self, path: str, key: Any = None) -> tuple[bytes, Any] | None:
        """The bytes last decoded at ``path`` (with ``key``) and their value, else None."""
        hit = self._last.get(path)
        return (hit[0], hit[2]) if hit is not None and hit[1] == key else None

    def put(self, path: str, data: bytes, value: Any, key: Any = None) -> None:
        if len(self._last) >= self._limit:
            self._last.clear()
        self._last[path] = (data, key, value)


def content_end(data: bytes, end: int) -> int:
    """Just past the last byte that is not zero, but at least ``end`` (where the valid
    frames end): the journal's size without its zero padding (F5)."""
    if end >= len(data):
        return len(data)
    n = len(data) - end
    # All padding, the common case: one memcmp (7 us over 256 KiB; rstrip takes 1 ms).
    if n <= len(_ZEROS) and data.endswith(_ZEROS[:n]):
        return end
    return end + len(data[end:].rstrip(b"\0"))


_ZEROS = memoryview(bytes(1 << 20))


def intact_frames(data: bytes, pos: int, salt: int) -> list[dict[str, Any] | None]:
    """Frames with a valid CRC past ``pos``, where the valid frames end (F5): damage in
    the middle, not a tear.

    A torn append leaves a partial last frame and nothing after it. A frame
    whose CRC (seeded with this journal's random salt) checks, lying past
    that point, was written by this journal's writer: something damaged the
    journal before it. Returns the decoded records (None where the payload is
    not a map).
    """
    found: list[dict[str, Any] | None] = []
    salt_crc = zlib.crc32(struct.pack("<I", salt))
    budget, size = TAIL_SCAN_BUDGET, len(data)
    while pos + FRAME_HEADER_SIZE <= size and budget > 0:
        length, crc = _FRAME.unpack_from(data, pos)
        stop = pos + FRAME_HEADER_SIZE + length
        if 0 < length <= MAX_FRAME and stop <= size:
            budget -= length
            payload = data[pos + FRAME_HEADER_SIZE : stop]
            if zlib.crc32(payload, salt_crc) == crc:
                try:
                    rec = _unpack(payload, "frame")
                except CorruptBlobError:
                    rec = None
                found.append(rec if isinstance(rec, dict) else None)
                pos = stop
                continue
        pos += 1
    return found
