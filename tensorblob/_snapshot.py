"""Reading a committed snapshot: manifest, journal, the boot rule, replay (F9).

``load`` builds the newest committed State from manifest + journal without
changing any file: readers use it as is, the writer's open and the operator
tools start from it. It applies the power-loss rule: commit records after
the last *durable marker* (a sync record, or a commit made with
``sync="full"``) are kept only if they were written during the current
kernel boot. Same boot means only the process died, and the page cache
still holds every row those commits reference; another boot means the
machine lost power or restarted, and those rows may never have reached the
disk, so those commits are discarded as if they had never happened.
Pure Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _durable, _records
from ._journal import JournalImage, read_journal
from ._manifest import read_manifest
from ._meta import Meta
from ._state import State
from .errors import CorruptBlobError

_RETRIES = 50
M = TypeVar("M")
J = TypeVar("J")


@dataclass
class Loaded:
    """A snapshot as found on disk, with what recovery needs to know about it."""

    state: State
    journal: JournalImage | None  # None when the journal is stale (older generation)
    kept: int = 0  # commit records replayed
    discarded: int = 0  # commit records dropped by the power-loss rule
    dirty: set[int] = field(default_factory=set)  # blocks written by non-durable kept commits

    @property
    def clean(self) -> bool:
        """True if the last writer closed cleanly: nothing to replay, discard or remove."""
        j = self.journal
        if j is None or j.torn or self.discarded:
            return False
        last = j.records[-1] if j.records else None
        return last is not None and last["t"] == _records.REC_SYNC and bool(last.get("c"))


def consistent_read(read_manifest: Callable[[], M], read_journal: Callable[[], J]) -> tuple[M, J]:
    """Read the manifest, then the journal, again while the journal follows a newer
    manifest than the one read: a checkpoint replaced both between the two reads.

    ``read_journal`` may return None (nothing usable); a checkpoint renames
    the manifest first, so a journal newer than the manifest read before it
    always means such a race (or damage, which a retry does not cure).
    """
    for _ in range(_RETRIES):
        m, j = read_manifest(), read_journal()
        if m is None or j is None or _base(j) <= _gen(m):
            break
    return m, j


def _base(j: Any) -> int:
    return int(j.base)


def _gen(m: Any) -> int:
    return int(m.gen)


def load(root: str, meta: Meta, *, redo_all: bool = False) -> Loaded:
    """Read the newest committed snapshot (F9), as a reader does: changes nothing.

    ``redo_all`` (recovery): list every row logged after the last block-durable
    marker in ``state.logged``, not only those of another boot (``_Scan.redo``).
    """
    state, journal = consistent_read(
        lambda: read_manifest(root, meta.uuid, meta.block_size, len(meta.fields)),
        lambda: read_journal(root, meta.uuid),
    )
    if journal.gen < state.gen:  # checkpoint between manifest and journal renames
        return Loaded(state, None)
    if journal.base == state.gen:  # after a checkpoint or a rotation (F7)
        return _replay(state, journal, meta, cache=root, redo_all=redo_all)
    copied = "manifest" if journal.base > state.gen else "journal"
    raise CorruptBlobError(
        f"journal of {root!r} follows generation {journal.base} but the manifest is "
        f"generation {state.gen}; the {copied} may have been replaced by an older copy",
        path=root,
        reason="generations",
    )


@dataclass
class _Scan:
    """What the boot rule (F9) and a replay need to know of a journal's first ``count``
    records. Extended record by record, so that a reader that refreshes while a writer
    commits scans only the new records (design.md, item 22)."""

    now: str  # this boot's id
    count: int = 0
    durable: int = -1  # the last durable marker (a sync record, or ``d``)
    in_blocks: int = -1  # the last block-durable marker (a sync record, or ``d`` without ``r``)
    sync: int = -1  # the last sync record
    boot: str | None = None  # the boot a record without its own inherits: its session's
    foreign: int = -1  # the first record after ``durable`` written in another boot, if any
    logged: list[tuple[int, str | None]] = field(default_factory=list)  # ``r`` after in_blocks

    def extend(self, records: list[dict[str, Any]]) -> _Scan:
        """This scan, extended over ``records[count:]`` (a copy: the original is kept)."""
        sc = _Scan(**{**vars(self), "logged": list(self.logged)})
        SYNC, OPEN = _records.REC_SYNC, _records.REC_OPEN
        for i in range(sc.count, len(records)):
            rec = records[i]
            t, b = rec["t"], rec.get("b")
            if t == OPEN:
                sc.boot = b
            elif b is None:
                b = sc.boot
            if t == SYNC or rec.get("d"):
                sc.durable, sc.foreign = i, -1
                if t == SYNC:
                    sc.sync = i
                if t == SYNC or "r" not in rec:
                    sc.in_blocks, sc.logged = i, []
            elif b != sc.now and sc.foreign < 0:
                sc.foreign = i
            if "r" in rec:
                sc.logged.append((i, b))
        sc.count = len(records)
        return sc

    @property
    def keep(self) -> int:
        """How many leading records ``load`` applies (``applied``)."""
        return self.count if self.foreign < 0 else self.durable + 1

    def redo(self, every_boot: bool = False) -> set[int]:
        """Kept records whose logged rows (``r``, F6) may be missing from the block files:
        after the last block-durable marker, written in another boot (the same boot's
        rows are in the page cache, if not on disk), or in any boot with ``every_boot``
        (recovery: a block's writeback that failed with EIO, then an unmount, loses the
        page cache's copy within a boot)."""
        keep, now = self.keep, self.now
        return {i for i, b in self.logged if i < keep and (every_boot or b != now)}


def tail_is_damage(
    records: list[dict[str, Any]], lost: list[dict[str, Any] | None], scan: _Scan | None = None
) -> bool:
    """Do the intact frames after a journal's valid ``records`` (``lost``; ``scan``: of
    ``records``, if at hand) mean damage, not a tear? Then dropping them would drop
    committed transactions (G5): readers and writers refuse the blob.

    A power cut explains them when they were written in another boot and
    none of them is known to have been flushed: the page cache may have
    written a later frame back and not an earlier one (frames written in
    place over padding), and the boot rule (F9) drops them. A frame that
    follows a durable marker is known to have been flushed past: the writer
    flushes the journal right after a durable marker, before it writes
    anything more, so the damaged bytes before the marker were on the disk.
    (The marker alone proves nothing: a power cut may come before its
    flush, with its page written back.) In this boot no power cut came:
    the page cache holds every frame as written, so any intact frame in the
    tail means damage.
    """
    if scan is None:
        scan = _Scan(_durable.boot_id()).extend(records)
    marker = flushed = False
    boots = set()
    inherited = True  # frames before the first open record inherit the valid part's boot
    for rec in lost:
        flushed |= marker  # written after the marker's flush returned
        if not isinstance(rec, dict):
            continue
        if rec.get("t") == _records.REC_OPEN:
            boots.add(rec.get("b"))
            inherited = False
        marker |= rec.get("t") == _records.REC_SYNC or bool(rec.get("d"))
    if inherited:
        boots.add(scan.boot)
    return flushed or scan.now in boots


def applied(records: list[dict[str, Any]]) -> int:
    """How many leading records ``load`` applies: the power-loss rule of F9.

    Records after the last durable marker (a sync record, or a commit made
    with ``sync="full"``) count only if they were written during this boot.
    A record's boot is its own ``b`` (records before 0.2) or else that of the
    open record that started its writer's session.
    """
    return _Scan(_durable.boot_id()).extend(records).keep


@dataclass
class _Replayed:
    """A replay of one manifest and a journal's first ``count`` records, all of them kept."""

    manifest: State
    scan: _Scan  # of those records
    last: dict[str, Any]  # the last of them, as decoded (the journal's decode shares it)
    state: State
    kept: int
    dirty: set[int]  # blocks written by its commits after its last block-durable marker


_REPLAYED: dict[str, _Replayed] = {}
_RESUME_MIN = 16  # records: a replay of fewer is not remembered or resumed


def _resume(state: State, records: list[dict[str, Any]], cache: str) -> _Replayed | None:
    """The replay of the first records of ``records`` that ``load`` made last time from
    this manifest, in this boot (design.md, item 22): records already applied are
    applied the same way whatever follows them."""
    hit = _REPLAYED.get(cache)
    if hit is None:
        return None
    n = hit.scan.count
    if n > len(records) or records[n - 1] is not hit.last or hit.scan.now != _durable.boot_id():
        return None
    return hit if hit.manifest == state else None


def _replay(
    state: State,
    journal: JournalImage,
    meta: Meta,
    *,
    cache: str | None = None,
    redo_all: bool = False,
) -> Loaded:
    records = journal.records
    hit = _resume(state, records, cache) if cache is not None else None
    scan = (hit.scan if hit else _Scan(_durable.boot_id())).extend(records)
    if journal.lost and tail_is_damage(records, journal.lost, scan):
        n = sum(isinstance(r, dict) and r.get("t") in _records.COMMITS for r in journal.lost)
        raise CorruptBlobError(
            f"the journal of {cache or 'the blob'!r} (generation {journal.gen}) is damaged at "
            f"offset {journal.end}: {len(journal.lost)} intact record(s) follow the damage ({n} "
            "committed transaction(s)), which readers and writers would drop. Copy the blob "
            "somewhere safe, then run `tensorblob check` and `tensorblob recover --salvage`",
            path=cache,
            reason="lost-frames",
        )
    keep = scan.keep
    if hit is not None and (hit.scan.count > keep or (redo_all and scan.logged)):
        hit = None  # its records are no longer all kept, or it redid none of theirs
    discarded = sum(rec["t"] in _records.COMMITS for rec in records[keep:])
    B, APPEND, i = meta.block_size, _records.REC_APPEND, 0
    manifest = state if hit is not None else state.copy() if cache is not None else None
    loaded = Loaded(state, journal, discarded=discarded)
    # Rows of commits after this marker may be only in the page cache (or, for
    # records with logged rows, in those records): recovery fsyncs their blocks.
    last_durable = scan.in_blocks
    if hit is not None:
        state, i, loaded.kept = hit.state.copy(), hit.scan.count, hit.kept
        if last_durable < i:  # the same marker as before: its dirty blocks still are
            loaded.dirty = set(hit.dirty)
        loaded.state = state
    # Snapshots are numbered in the journal's generation, which a rotation
    # moved past the manifest's (F7): the state takes it on.
    state.gen = journal.gen
    redo = scan.redo(redo_all)
    what = f"journal of generation {journal.gen}"
    while i < keep:
        j = i + 1
        if i in redo:
            pos = state.length
            written = state.apply(records[i], B, what)
            state.logged.extend(_logged_chunks(state, meta, pos, records[i], what))
        elif records[i]["t"] == APPEND:  # a run of appends (a collector's commits): one pass
            # The run stops after the last durable marker, which may be an append,
            # and before logged rows to redo.
            while (
                j < keep and j != last_durable + 1 and records[j]["t"] == APPEND and j not in redo
            ):
                j += 1
            written = state.apply_appends(records[i:j], B, what)
        else:
            written = state.apply(records[i], B, what)
        if records[i]["t"] in _records.COMMITS:
            loaded.kept += j - i
            if i > last_durable:
                loaded.dirty.update(written)
        i = j
    if loaded.kept:
        state.validate(meta.block_size, f"{what}: after replay")
    if manifest is not None and keep == len(records) >= _RESUME_MIN and not redo:
        _remember(
            cache,
            _Replayed(manifest, scan, records[-1], state.copy(), loaded.kept, set(loaded.dirty)),
        )
    return loaded


def _remember(cache: Any, replayed: _Replayed) -> None:
    if len(_REPLAYED) >= 64:
        _REPLAYED.clear()
    _REPLAYED[cache] = replayed


def _logged_chunks(
    state: State, meta: Meta, pos: int, rec: dict[str, Any], what: str
) -> list[tuple[int, int, bytes]]:
    """Where the logged rows of ``rec``, an append from ``pos`` rows, go: one
    ``(block_id, byte_offset, bytes)`` per field. Raises CorruptBlobError if they do not
    fit one block, as the writer writes them."""
    B, rows, n = meta.block_size, rec["r"], rec["n"] - pos
    slot, row = divmod(pos, B)
    if row + n > B or len(rows) != n * meta.row_bytes:
        _records.corrupt(what, f"append q={rec['q']}: logged rows do not fit", "does-not-fit")
    out, at = [], 0
    for fld in meta.fields:
        k = n * fld.row_bytes
        out.append((state.blocks[slot], fld.offset + row * fld.row_bytes, rows[at : at + k]))
        at += k
    return out
