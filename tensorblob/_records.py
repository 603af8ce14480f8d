"""Journal records and file bodies as data: record types, constructors, schema checks (F2-F6).

Every record is built by a constructor here and checked by the rules here;
``_format`` turns them into bytes and back. Pure Python (no msgpack): a
record is a dict with one-letter keys, as it is on disk. docs/format.md is
the normative description.
"""

from __future__ import annotations

from typing import Any, NoReturn

from .errors import CorruptBlobError

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


def logged_append(n: int, rows: bytes) -> dict[str, Any]:
    """A ``sync="full"`` append to ``n`` rows whose rows travel in the record (``r``, F6):
    a durable marker whose rows may not be in the block file yet."""
    return {"t": REC_APPEND, "n": n, "d": True, "r": rows}


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


# -- schema checks: a CRC-valid body with the wrong shape is still damage ----


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def corrupt(what: str, detail: str, reason: str) -> NoReturn:
    """Raise CorruptBlobError ``"{what}: {detail}"`` with its ``reason`` code."""
    raise CorruptBlobError(f"{what}: {detail}", reason=reason, detail=detail)


def require(cond: bool, what: str, detail: str, reason: str = "schema") -> None:
    if not cond:
        corrupt(what, detail, reason)


def check_meta(m: dict[str, Any], what: str) -> None:
    """A blob's meta (``dtype``, ``shape``) or a TensorDB's (``fields``), F2."""
    require(isinstance(m.get("uuid"), bytes) and len(m["uuid"]) == 16, what, "bad uuid")
    require(_is_int(m.get("block_size")) and m["block_size"] > 0, what, "bad block_size")
    if "fields" in m:
        fields = m["fields"]
        require(type(fields) is list and len(fields) > 0, what, "bad fields")
        for f in fields:
            require(type(f) is list and len(f) == 3, what, "bad field")
            require(isinstance(f[0], str) and isinstance(f[1], str), what, "bad field")
            require(_shape(f[2]), what, "bad field shape")
        return
    require(isinstance(m.get("dtype"), str), what, "bad dtype")
    require(_shape(m.get("shape")), what, "bad shape")


def _shape(shape: Any) -> bool:
    return isinstance(shape, list) and all(_is_int(d) for d in shape)


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
    born = m.get("born")  # absent in older manifests: no lower bounds of births
    require(born is None or _floors(born), what, "bad born list")
    freed = m.get("freed")  # absent in older manifests: freed at the manifest's generation
    require(freed is None or (_ints(freed) and len(freed) == len(free)), what, "bad freed list")


def _floors(x: Any) -> bool:
    """Pairs ``[first id, seq]``, both increasing (F3 ``born``)."""
    if type(x) is not list:
        return False
    prev = (-1, -1)
    for e in x:
        if type(e) is not list or len(e) != 2 or not _ints(e):
            return False
        if e[0] <= prev[0] or e[1] < prev[1]:
            return False
        prev = (e[0], e[1])
    return True


def _opt_crcs(x: Any, n: int) -> bool:
    if type(x) is not list or len(x) != n:
        return False
    for c in x:
        if c is None or (type(c) is int and 0 <= c < 1 << 32):
            continue
        if type(c) is not list or not c or not _crcs(c):
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
    return type(p) is list and len(p) >= 2 and _is_int(p[0]) and _crcs(p[1:])


def _crcs(x: Any) -> bool:
    for c in x:  # noqa: SIM110 - a plain loop, as _ints
        if type(c) is not int or not 0 <= c < 1 << 32:
            return False
    return True


def pack_crcs(crcs: tuple[int, ...]) -> int | list[int]:
    """A manifest's ``crc`` entry for the crcs of a full block: one int for one field
    (as before TensorDB), else a list (F3)."""
    return crcs[0] if len(crcs) == 1 else list(crcs)


def unpack_crcs(entry: int | list[int]) -> tuple[int, ...]:
    return (entry,) if type(entry) is int else tuple(entry)


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
        if "r" in r:  # logged rows: bytes, in a durable marker
            require(type(r["r"]) is bytes, what, f"append record q={r['q']}: bad r")
            require(r.get("d") is True, what, f"append record q={r['q']}: r without d")
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
    """The optional checksums ``cs`` of a durable marker: ``[[bid, rows, crc, ...], ...]``,
    one crc per field (F6)."""
    cs = r.get("cs")
    if cs is not None:
        require(_triples(cs), what, f"record q={r['q']}: bad checksums")


def _triples(x: Any) -> bool:
    if type(x) is not list:
        return False
    for e in x:  # a plain loop: this runs for every block of a close record at every open
        if type(e) is not list or len(e) < 3:
            return False
        a, b = e[0], e[1]
        if type(a) is not int or type(b) is not int or a < 0 or b < 0:
            return False
        for c in e[2:]:
            if type(c) is not int or not 0 <= c < 1 << 32:
                return False
    return True


def check_commit(r: dict[str, Any], what: str) -> None:
    for key in ("n", "k", "x"):
        require(_is_int(r.get(key)), what, f"commit record q={r.get('q')}: bad {key}")
    require(_pairs(r.get("s")), what, f"commit record q={r.get('q')}: bad slots")
    require(_pairs(r.get("h")), what, f"commit record q={r.get('q')}: bad hwm")
    for key in ("f", "w"):
        require(_ints(r.get(key)), what, f"commit record q={r.get('q')}: bad {key}")
