"""The byte format, and nothing but the byte format: magic, version, framing, CRC, schemas.

Pure functions, but for ``read_file``, the one read of a whole small file
that the readers of meta, manifest and journal share. docs/format.md is the
normative description; the rule numbers cited here (F1, F2, ...) refer to it.

Every file that is not a block starts with the same 20-byte header (F1)::

    offset size  field
    0      8     magic         b"TBLBMETA" | b"TBLBMANI" | b"TBLBJRNL"
    8      2     version       u16 little-endian, format version (1, 2 or 3)
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

from .errors import CorruptBlobError, NotABlobError, UnsupportedVersionError

# 2: append records, boot ids in open records only; 3: a rotated journal, whose
# header names the manifest generation it applies to ("base"), which a reader
# of version 2 would take for damage (docs/format.md). Every file is written
# as version 2 except a rotated journal.
FORMAT_VERSION = 3  # the newest version this library reads
WRITE_VERSION = 2  # the version of the files it writes, but rotated journals
MAGIC_META = b"TBLBMETA"
MAGIC_MANIFEST = b"TBLBMANI"
MAGIC_JOURNAL = b"TBLBJRNL"

_HEADER = struct.Struct("<8sHHII")
HEADER_SIZE = _HEADER.size  # 20
_FRAME = struct.Struct("<II")
FRAME_HEADER_SIZE = _FRAME.size  # 8
MAX_FRAME = 1 << 26  # a frame larger than this is garbage, not a record (F5)
LAST_Q = (1 << 32) - 1  # past every frame's sequence number (snapshot_seq's low word)

# Record types inside journal frames (F6).
REC_COMMIT = "c"  # a transaction, as a full delta
REC_APPEND = "a"  # a transaction that only appended rows in place: just the new length
REC_SYNC = "s"  # a durable point (``c``: the writer closed)
REC_OPEN = "o"  # a writer session starts; carries the boot id its records inherit
COMMITS = (REC_COMMIT, REC_APPEND)
RECORD_TYPES = (REC_COMMIT, REC_APPEND, REC_SYNC, REC_OPEN)


# -- record constructors: every record is built here (F6) --------------------
# The writer adds ``q`` when it appends a record (JournalWriter).


def open_record(boot: str) -> dict[str, Any]:
    """A writer session starts; its records inherit the boot id ``boot`` (F9)."""
    return {"t": REC_OPEN, "b": boot}


def sync_record(closing: bool, sums: list[list[int]] | None = None) -> dict[str, Any]:
    """A durable point (``closing``: the writer closed), with the checksums it made durable."""
    rec: dict[str, Any] = {"t": REC_SYNC, "c": closing}
    if sums:
        rec["cs"] = sums
    return rec


def append_record(n: int, *, carried: bool = False) -> dict[str, Any]:
    """A transaction that only appended rows in place, growing the blob to ``n`` rows.

    ``carried``: the record a rotation carries into a new journal (``p``, F7.6).
    """
    rec: dict[str, Any] = {"t": REC_APPEND, "n": n}
    if carried:
        rec["p"] = True
    return rec


def commit_record(  # noqa: PLR0917 - the fields of the record (F6)
    n: int,
    k: int,
    s: list[list[int]],
    h: list[list[int]],
    f: list[int],
    w: list[int],
    x: int,
) -> dict[str, Any]:
    """A transaction as a full delta: length, slot count, changed slots, high-water marks,
    freed, written, next block id."""
    return {"t": REC_COMMIT, "n": n, "k": k, "s": s, "h": h, "f": f, "w": w, "x": x}


def mark_durable(rec: dict[str, Any], sums: list[list[int]]) -> dict[str, Any]:
    """Make a commit or append record a ``sync="full"`` durable marker (``d``, ``cs``)."""
    rec["d"] = True
    if sums:
        rec["cs"] = sums
    return rec


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
        raise CorruptBlobError(f"{what}: body is not valid msgpack ({exc})") from None


def encode_file(magic: bytes, body: dict[str, Any], version: int = WRITE_VERSION) -> bytes:
    payload = pack(body)
    return _HEADER.pack(magic, version, 0, len(payload), zlib.crc32(payload)) + payload


def decode_header(magic: bytes, data: bytes, what: str) -> tuple[dict[str, Any], int]:
    """Decode a header and its body; return the body and the offset just past it (F1-F3)."""
    if len(data) < HEADER_SIZE:
        if magic == MAGIC_META and data[: len(magic)] != magic[: len(data)]:
            raise NotABlobError(f"{what}: not a tensorblob meta file")
        raise CorruptBlobError(f"{what}: file is truncated ({len(data)} bytes, header needs 20)")
    got_magic, version, _reserved, body_len, body_crc = _HEADER.unpack_from(data)
    if got_magic != magic:
        if magic == MAGIC_META:
            raise NotABlobError(f"{what}: not a tensorblob meta file (magic {got_magic!r})")
        raise CorruptBlobError(f"{what}: wrong magic {got_magic!r}, expected {magic!r}")
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"{what}: format version {version} is newer than this library reads "
            f"({FORMAT_VERSION}); upgrade tensorblob"
        )
    if version < 1:
        raise CorruptBlobError(f"{what}: invalid format version {version}")
    end = HEADER_SIZE + body_len
    if len(data) < end:
        raise CorruptBlobError(f"{what}: body is truncated ({len(data) - HEADER_SIZE}/{body_len})")
    body = data[HEADER_SIZE:end]
    if zlib.crc32(body) != body_crc:
        raise CorruptBlobError(f"{what}: checksum mismatch, the file is damaged")
    obj = _unpack(body, what)
    if not isinstance(obj, dict):
        raise CorruptBlobError(f"{what}: body is not a map")
    return obj, end


def header_version(data: bytes) -> int:
    """The version field of a header that ``decode_header`` has accepted."""
    return int(_HEADER.unpack_from(data)[1])


def decode_file(magic: bytes, data: bytes, what: str) -> dict[str, Any]:
    obj, end = decode_header(magic, data, what)
    if end != len(data):
        raise CorruptBlobError(f"{what}: {len(data) - end} unexpected bytes after the body")
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
    data: bytes | memoryview, start: int, salt: int
) -> tuple[list[dict[str, Any]], int]:
    """Decode frames from ``start``; stop at the first one that is not valid (F5).

    Returns the records and the offset just past the last valid frame. A frame
    is valid iff its length is in ``1..MAX_FRAME``, it lies wholly inside
    ``data``, its CRC (seeded with the journal's salt) matches, its payload is
    a msgpack map with a known ``t`` and its ``q`` is one more than the
    previous frame's (the first frame has ``q == 1``).
    """
    records: list[dict[str, Any]] = []
    append = records.append
    salt_crc = zlib.crc32(struct.pack("<I", salt))
    if not isinstance(data, bytes):
        data = bytes(data)
    unpack_from, crc32, unpackb = _FRAME.unpack_from, zlib.crc32, msgpack.unpackb
    pos, size, q = start, len(data), 1
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


# -- schema checks: a CRC-valid body with the wrong shape is still damage ----


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def require(cond: bool, what: str, detail: str) -> None:
    if not cond:
        raise CorruptBlobError(f"{what}: {detail}")


def check_meta(m: dict[str, Any], what: str) -> None:
    require(isinstance(m.get("uuid"), bytes) and len(m["uuid"]) == 16, what, "bad uuid")
    require(isinstance(m.get("dtype"), str), what, "bad dtype")
    shape = m.get("shape")
    require(isinstance(shape, list) and all(_is_int(d) for d in shape), what, "bad shape")
    require(_is_int(m.get("block_size")) and m["block_size"] > 0, what, "bad block_size")


def check_manifest(m: dict[str, Any], what: str) -> None:
    """Schema of a manifest body (F3). Plain loops: every open runs this over every block."""
    require(isinstance(m.get("uuid"), bytes), what, "bad uuid")
    for key in ("gen", "length", "next_id"):
        require(_is_int(m.get(key)), what, f"bad {key}")
    blocks, hwm, free = m.get("blocks"), m.get("hwm"), m.get("free")
    require(_ints(blocks), what, "bad blocks")
    require(_ints(hwm) and len(hwm) == len(blocks), what, "bad hwm")
    require(_ints(free), what, "bad free list")
    crc = m.get("crc")  # absent in manifests written before 0.1.0
    require(crc is None or _opt_crcs(crc, len(blocks)), what, "bad crc list")
    psum = m.get("psum")  # absent in manifests written before 0.2.0
    require(psum is None or _opt_sums(psum, len(blocks)), what, "bad psum list")


def _opt_crcs(x: Any, n: int) -> bool:
    if type(x) is not list or len(x) != n:
        return False
    for c in x:  # noqa: SIM110 - a plain loop, as _ints
        if c is not None and (type(c) is not int or not 0 <= c < 1 << 32):
            return False
    return True


def _opt_sums(x: Any, n: int) -> bool:
    if type(x) is not list or len(x) != n:
        return False
    for p in x:  # noqa: SIM110 - a plain loop, as _ints
        if p is not None and not _sum(p):
            return False
    return True


def _sum(p: Any) -> bool:
    return type(p) is list and len(p) == 2 and _is_int(p[0]) and _is_int(p[1]) and p[1] < 1 << 32


def check_journal_header(h: dict[str, Any], what: str) -> None:
    require(isinstance(h.get("uuid"), bytes), what, "bad uuid")
    require(_is_int(h.get("gen")), what, "bad gen")
    require(_is_int(h.get("salt")) and h["salt"] < 1 << 32, what, "bad salt")
    base = h.get("base", h["gen"])  # absent before version 3: the journal's own generation
    require(_is_int(base) and base <= h["gen"], what, "bad base generation")


def _pairs(x: Any) -> bool:
    if type(x) is not list:
        return False
    for p in x:  # a plain loop: this runs for every record of every open
        if type(p) is not list or len(p) != 2 or type(p[0]) is not int or type(p[1]) is not int:
            return False
        if p[0] < 0 or p[1] < 0:
            return False
    return True


def _ints(x: Any) -> bool:
    if type(x) is not list:
        return False
    for b in x:  # noqa: SIM110 - a plain loop is faster than all() with a generator here
        if type(b) is not int or b < 0:
            return False
    return True


def check_record(r: dict[str, Any], what: str) -> None:
    """Schema of one decoded record (F6); ``decode_frames`` has checked ``t`` and ``q``."""
    t = r["t"]
    if t == REC_APPEND:
        n = r.get("n")
        require(type(n) is int and n > 0, what, f"append record q={r['q']}: bad n")
        require(r.get("p", True) is True, what, f"append record q={r['q']}: bad p")
        if "cs" in r:
            check_sums(r, what)
        return
    b = r.get("b")
    if t == REC_OPEN:
        require(type(b) is str, what, f"open record q={r['q']}: bad boot id")
        return
    # Commit and sync records written before 0.2 carry their own boot id.
    require(b is None or type(b) is str, what, f"record q={r['q']}: bad boot id")
    if t == REC_COMMIT:
        check_commit(r, what)
    check_sums(r, what)


def check_sums(r: dict[str, Any], what: str) -> None:
    """The optional checksums ``cs`` of a durable marker: ``[[bid, rows, crc], ...]`` (F6)."""
    cs = r.get("cs")
    if cs is not None:
        require(_triples(cs), what, f"record q={r['q']}: bad checksums")


def _triples(x: Any) -> bool:
    if type(x) is not list:
        return False
    for e in x:  # a plain loop: this runs for every block of a close record at every open
        if type(e) is not list or len(e) != 3:
            return False
        a, b, c = e
        if type(a) is not int or type(b) is not int or type(c) is not int:
            return False
        if a < 0 or b < 0 or not 0 <= c < 1 << 32:
            return False
    return True


def check_commit(r: dict[str, Any], what: str) -> None:
    for key in ("n", "k", "x"):
        require(_is_int(r.get(key)), what, f"commit record q={r.get('q')}: bad {key}")
    require(_pairs(r.get("s")), what, f"commit record q={r.get('q')}: bad slots")
    require(_pairs(r.get("h")), what, f"commit record q={r.get('q')}: bad hwm")
    for key in ("f", "w"):
        require(_ints(r.get(key)), what, f"commit record q={r.get('q')}: bad {key}")
