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


def load(root: str, meta: Meta) -> Loaded:
    """Read the newest committed snapshot (F9), as a reader does: changes nothing."""
    state, journal = consistent_read(
        lambda: read_manifest(root, meta.uuid, meta.block_size, len(meta.fields)),
        lambda: read_journal(root, meta.uuid),
    )
    if journal.gen < state.gen:  # checkpoint between manifest and journal renames
        return Loaded(state, None)
    if journal.base == state.gen:  # after a checkpoint or a rotation (F7)
        return _replay(state, journal, meta, cache=root)
    copied = "manifest" if journal.base > state.gen else "journal"
    raise CorruptBlobError(
        f"journal of {root!r} follows generation {journal.base} but the manifest is "
        f"generation {state.gen}; the {copied} may have been replaced by an older copy",
        path=root,
        reason="generations",
    )


def _last_durable(
    records: list[dict[str, Any]], end: int | None = None, *, in_blocks: bool = False
) -> int:
    """Index of the last durable marker (a sync or ``d`` record) below ``end``; -1 if none.

    ``in_blocks``: the last one that also says every committed row is in the
    block files, which a record with logged rows (``r``, F6) does not.
    """
    for i in range(len(records) if end is None else end)[::-1]:
        rec = records[i]
        if rec["t"] == _records.REC_SYNC or (rec.get("d") and not (in_blocks and "r" in rec)):
            return i
    return -1


def _boots(records: list[dict[str, Any]]) -> list[str | None]:
    """The boot each record was written in (F9: its own ``b``, else its session's)."""
    out, boot = [], None
    for rec in records:
        b = rec.get("b")
        if rec["t"] == _records.REC_OPEN:
            boot = b
        elif b is None:
            b = boot
        out.append(b)
    return out


def applied(records: list[dict[str, Any]]) -> int:
    """How many leading records ``load`` applies: the power-loss rule of F9.

    Records after the last durable marker (a sync record, or a commit made
    with ``sync="full"``) count only if they were written during this boot.
    A record's boot is its own ``b`` (records before 0.2) or else that of the
    open record that started its writer's session.
    """
    last_durable = _last_durable(records)
    if last_durable == len(records) - 1:
        return len(records)
    now = _durable.boot_id()
    for i, b in enumerate(_boots(records)):
        if i > last_durable and b != now:
            return last_durable + 1
    return len(records)


@dataclass
class _Replayed:
    """Where a replay of one manifest and journal stood after a sync record."""

    manifest: State
    count: int  # records replayed: the last is a sync record
    last: dict[str, Any]  # that record, as decoded (the journal's decode shares it)
    state: State
    kept: int


_REPLAYED: dict[str, _Replayed] = {}
_RESUME_MIN = 16  # records: a replay of fewer is not remembered or resumed


def _resume(state: State, records: list[dict[str, Any]], keep: int, cache: str) -> _Replayed | None:
    """The replay of ``records`` up to a sync record that ``load`` made last time from
    this manifest (design.md, item 22): every record before a sync record is
    applied the same way whatever follows it (no logged rows to redo, none dirty)."""
    hit = _REPLAYED.get(cache)
    if hit is None or hit.count > keep or records[hit.count - 1] is not hit.last:
        return None
    return hit if hit.manifest == state else None


def _replay(state: State, journal: JournalImage, meta: Meta, *, cache: str | None = None) -> Loaded:
    records = journal.records
    keep = applied(records)
    discarded = sum(rec["t"] in _records.COMMITS for rec in records[keep:])
    B, APPEND, SYNC, i = meta.block_size, _records.REC_APPEND, _records.REC_SYNC, 0
    if keep < _RESUME_MIN:  # a short journal replays faster than the copies cost
        cache = None
    hit = _resume(state, records, keep, cache) if cache is not None else None
    last_sync = next((k for k in range(keep)[::-1] if records[k]["t"] == SYNC), -1)
    manifest = None  # the manifest, to remember a replay up to the last sync record
    if cache is not None and (hit is None or hit.count <= last_sync):
        manifest = state if hit is not None else state.copy()  # a hit leaves it as read
    if hit is not None:
        state, i = hit.state.copy(), hit.count
    # Snapshots are numbered in the journal's generation, which a rotation
    # moved past the manifest's (F7): the state takes it on.
    state.gen = journal.gen
    loaded = Loaded(state, journal, kept=hit.kept if hit else 0, discarded=discarded)
    # Rows of commits after this marker may be only in the page cache (or, for
    # records with logged rows, in those records): recovery fsyncs their blocks.
    last_durable = _last_durable(records, keep, in_blocks=True)
    redo = _redo_from(records, keep, last_durable)
    what = f"journal of generation {journal.gen}"
    while i < keep:
        j = i + 1
        if i in redo:
            pos = state.length
            written = state.apply(records[i], B, what)
            state.logged.extend(_logged_chunks(state, meta, pos, records[i], what))
        elif records[i]["t"] == APPEND:  # a run of appends (a collector's commits): one pass
            # The run stops after the last durable marker, which may be an append.
            while j < keep and j != last_durable + 1 and records[j]["t"] == APPEND:
                j += 1
            written = state.apply_appends(records[i:j], B, what)
        else:
            written = state.apply(records[i], B, what)
        if records[i]["t"] in _records.COMMITS:
            loaded.kept += j - i
            if i > last_durable:
                loaded.dirty.update(written)
        if i == last_sync and manifest is not None:
            _remember(cache, _Replayed(manifest, j, records[i], state.copy(), loaded.kept))
        i = j
    if loaded.kept:
        state.validate(meta.block_size, f"{what}: after replay")
    return loaded


def _remember(cache: Any, replayed: _Replayed) -> None:
    if len(_REPLAYED) >= 64:
        _REPLAYED.clear()
    _REPLAYED[cache] = replayed


def _redo_from(records: list[dict[str, Any]], keep: int, last_in_blocks: int) -> set[int]:
    """Indices of the kept records whose logged rows (``r``, F6) may be missing from the
    block files: after the last marker that put every row in them, written in another
    boot (the same boot's rows are in the page cache, if not on disk)."""
    idx = [i for i in range(last_in_blocks + 1, keep) if "r" in records[i]]
    if not idx:
        return set()
    now, boots = _durable.boot_id(), _boots(records)
    return {i for i in idx if boots[i] != now}


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
