"""The committed state of a scanned blob, or the longest consistent prefix of a damaged one.

``read_state`` reads ``manifest`` and ``journal`` the way ``_snapshot.load``
does (same retry on a racing checkpoint, same boot rule, same replay through
``_snapshot._replay``), but record by record, so that it can say where the
damage is and what a salvage keeps:

- a journal that is missing, damaged in its header, another blob's, or newer
  than the manifest: salvage (a) keeps the manifest's state;
- a record that passes its CRC but is invalid (F6), or intact frames after
  the point where the valid ones end (damage in the middle, not a torn tail):
  salvage keeps the records before it;
- ``check_blocks``: a referenced block file missing or of the wrong size:
  salvage (b) truncates to the rows before the first such block.

A damaged ``manifest`` is not salvaged: block files hold rows but neither
their order nor their count. Nothing here changes a file.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from . import _records, _snapshot
from ._blockfiles import BLOCKS, block_name
from ._findings import Scan, ids_text, rows_text
from ._journal import JOURNAL, JournalScan, scan_journal
from ._manifest import MANIFEST, read_manifest
from ._meta import Meta
from ._state import State
from .errors import CorruptBlobError


def read_state(sc: Scan, meta: Meta) -> None:
    """Read manifest and journal (retrying a checkpoint race, as load() does) and replay."""
    root = sc.root

    def journal() -> JournalScan | None:  # None: unusable, or no race to retry (own lock)
        sc.journal = scan_journal(root, meta.uuid)
        usable = sc.journal.present and not sc.journal.error
        return sc.journal if usable and not sc.own_lock else None

    sc.manifest, _ = _snapshot.consistent_read(lambda: _read_manifest(sc, meta), journal)
    m, j = sc.manifest, sc.journal
    if m is None:
        sc.unrepairable = True
        return
    if not j.present or j.error:
        _journal_unusable(sc, m)
        return
    if j.gen < m.gen:
        sc.relation = "stale"
        sc.add(
            "warning",
            "journal-stale",
            f"the journal follows generation {j.base} but the manifest is generation {m.gen}: "
            "a checkpoint was interrupted after writing the manifest and before replacing "
            "the journal; the manifest already holds every committed transaction",
            "run `tensorblob recover PATH`: it starts a new journal; nothing committed is lost",
            JOURNAL,
        )
        sc.loaded = sc.committed = _snapshot.Loaded(copy.deepcopy(m), None)
        return
    if j.base != m.gen:
        # Newer (or, from damage only, older while the journal's own generation
        # is not): the records apply to another manifest than this one.
        sc.relation = "newer"
        sc.add(
            "error",
            "manifest-older",
            f"the journal follows checkpoint generation {j.base} but the manifest is generation "
            f"{m.gen}: the manifest is an older copy (restored from a backup, or copied over "
            "the newer one), and the journal's transactions cannot be applied to it",
            "put back the newest manifest if you have it; otherwise `tensorblob recover "
            f"--salvage` goes back to the manifest's generation {m.gen} ({rows_text(m.length)}) "
            "and drops the journal",
            MANIFEST,
        )
        _salvage_without_journal(sc, m, meta)
        return
    sc.relation = "current"
    _replay(sc, m, meta)


def _read_manifest(sc: Scan, meta: Meta) -> State | None:
    path = os.path.join(sc.root, MANIFEST)
    fix = (
        "restore `manifest` from a backup of this blob (with its journal). recover cannot "
        "rebuild it: block files hold rows but not their order or count. Until then readers "
        "and writers cannot open the blob; do not delete anything in it"
    )
    if not os.path.lexists(path):
        sc.add(
            "error",
            "manifest-missing",
            "manifest is missing: the committed state (row count and block list) is gone",
            fix,
            MANIFEST,
        )
        return None
    try:
        return read_manifest(sc.root, meta.uuid, meta.block_size, len(meta.fields))
    except CorruptBlobError as exc:
        if exc.reason == "foreign":
            code = "manifest-foreign"
            what = "manifest belongs to another blob (its uuid differs from meta's): it was "
            what += "copied in from another blob"
        else:
            detail = exc.detail or str(exc)
            if exc.reason == "wrong-magic":
                detail = "it does not start with TBLBMANI (wrong magic)"
            code, what = "manifest-damaged", f"manifest is damaged: {detail}"
        sc.add("error", code, what, fix, MANIFEST)
    except OSError as exc:
        sc.add("error", "io-error", f"cannot read manifest: {exc}", fix, MANIFEST)
    return None


def _journal_unusable(sc: Scan, m: State) -> None:
    """The journal is missing, damaged in its header, or another blob's: only --salvage helps."""
    j, meta = sc.journal, sc.meta
    assert meta is not None
    keeps = f"keeps the manifest's state (generation {m.gen}, {rows_text(m.length)})"
    if not j.present:
        code, what = "journal-missing", "the journal is missing"
    elif j.foreign:
        code, what = "journal-foreign", "the journal belongs to another blob (its uuid "
        what += "differs from meta's): it was copied in from another blob"
    else:
        code, what = "journal-damaged", f"the journal is damaged: {j.error}"
    sc.add(
        "error",
        code,
        f"{what}. The transactions this blob committed since checkpoint generation {m.gen} "
        "were recorded only there and cannot be read; readers and writers cannot open the "
        "blob",
        "restore this blob's `journal` from a backup taken together with its manifest; "
        f"otherwise `tensorblob recover --salvage` {keeps}, drops the journal"
        + (f" ({j.size} bytes)" if j.present else "")
        + " and starts a new one",
        JOURNAL,
    )
    _salvage_without_journal(sc, m, meta)


def _salvage_without_journal(sc: Scan, m: State, meta: Meta) -> None:
    """Salvage (a): keep the manifest's state, drop the journal."""
    state = copy.deepcopy(m)
    j = sc.journal
    state.gen = max(state.gen, j.gen)  # the new checkpoint must follow every generation seen
    sc.salvage = _snapshot.Loaded(state, None)
    sc.drops.journal_bytes = j.size
    readable = [r for r in j.records if r["t"] in _records.COMMITS]
    if sc.relation == "newer":
        sc.drops.transactions = len(readable)
        line = f"the journal ({j.size} bytes) with its {len(readable)} transaction(s)"
        if readable and is_n(readable[-1].get("n")):
            sc.drops.rows = max(0, readable[-1]["n"] - m.length)
            line += f"; the last of them left the blob at {rows_text(readable[-1]['n'])}"
    else:
        sc.drops.exact = False
        line = f"the journal ({j.size} bytes)" if j.present else "the missing journal"
        line += (
            f": every transaction committed since checkpoint generation {m.gen}, however "
            f"many; the blob goes back to that checkpoint ({rows_text(m.length)})"
        )
    sc.drops.lines.append(line)


def _applied(records: list[dict[str, Any]]) -> range:
    """Indices of the records load() applies: the boot rule of F9."""
    return range(_snapshot.applied(records))


def _first_failure(m: State, records: list[dict[str, Any]], meta: Meta) -> tuple[int, str]:
    """The first applied commit record after which the state is not well-formed (F6)."""
    st = copy.deepcopy(m)
    last = len(records) - 1
    for i in _applied(records):
        rec = records[i]
        if rec["t"] in _records.COMMITS:
            try:
                st.apply(rec, meta.block_size, "journal")
                st.validate(meta.block_size, "journal")
            except CorruptBlobError as exc:
                return i, exc.detail or str(exc)
            last = i
    return last, "the state after it is not well-formed"


def _replay(sc: Scan, m: State, meta: Meta) -> None:
    """Replay a current journal; find the longest consistent prefix if it does not apply."""
    j = sc.journal
    cut = len(j.records) if j.bad_index is None else j.bad_index
    reason = j.bad_reason
    while True:  # the library's own replay decides; we only look for where it fails
        try:
            loaded = _snapshot._replay(copy.deepcopy(m), j.image(cut), meta, redo_all=True)
            break
        except CorruptBlobError:
            i, reason = _first_failure(m, j.records[:cut], meta)
            cut = min(i, cut - 1)
    dropped = [r for r in j.records[cut:] if r["t"] in _records.COMMITS]
    # Intact frames after the damage that a power cut does not explain (readers and
    # writers refuse the blob); those it explains are a torn tail, dropped by recovery.
    damage = j.lost if j.lost and _snapshot.tail_is_damage(j.records, j.lost) else []
    lost = [r for r in damage if r is None or r.get("t") in _records.COMMITS]
    if cut == len(j.records) and not damage:
        sc.loaded = sc.committed = loaded
        _describe_replay(sc, loaded)
        return
    sc.salvage = loaded
    kept = loaded.state.length
    sc.drops.transactions = len(dropped) + len(lost)
    sc.drops.journal_bytes = j.size - j.offset(cut)
    claims = [r["n"] for r in [*dropped, *lost] if isinstance(r, dict) and is_n(r.get("n"))]
    if claims:
        sc.drops.rows = max(0, claims[-1] - kept)
    salvage = (
        f"`tensorblob recover --salvage` keeps the {rows_text(kept)} committed before it and drops "
        f"{sc.drops.transactions} transaction(s)"
    )
    if cut < len(j.records):
        q = j.records[cut].get("q")
        sc.add(
            "error",
            "journal-bad-record",
            f"journal record q={q} at offset {j.offset(cut)} passes its checksum but is "
            f"invalid ({reason.split(': ', 1)[-1]}): the journal is damaged, not torn. "
            f"Neither readers nor writers can open the blob",
            f"restore the blob from a backup; otherwise {salvage}",
            JOURNAL,
        )
    if damage:
        sc.add(
            "error",
            "journal-lost-frames",
            f"the journal is damaged at offset {j.end}, and {len(damage)} intact record(s) "
            f"follow the damage ({len(lost)} committed transaction(s)); readers and writers "
            "refuse the blob rather than drop them",
            "copy the blob somewhere safe first; " + salvage + " for good",
            JOURNAL,
        )
    line = (
        f"{sc.drops.transactions} transaction(s) recorded from journal offset {j.offset(cut)} "
        f"on ({sc.drops.journal_bytes} bytes); the blob keeps {rows_text(kept)}"
    )
    if claims:
        line += f" (the last dropped transaction had left it at {rows_text(claims[-1])})"
    if damage and cut == len(j.records):
        line += "; the damaged record itself may have been a transaction too"
    sc.drops.lines.append(line)


def is_n(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _describe_replay(sc: Scan, loaded: _snapshot.Loaded) -> None:
    """Warnings for a blob whose last writer did not close it (recover repairs all of it)."""
    j = sc.journal
    if j.end != j.size:
        n = j.size - j.end
        sc.add(
            "warning",
            "journal-torn",
            f"the journal has {n} torn byte(s) after its last complete record (offset "
            f"{j.end}): the last writer crashed; recover will discard {n} torn bytes",
            "run `tensorblob recover PATH`: a torn record was never committed, so nothing "
            "committed is lost",
            JOURNAL,
        )
    if loaded.discarded:
        sc.add(
            "warning",
            "boot-discard",
            f"{loaded.discarded} transaction(s) committed with sync='normal' after the last "
            "durable point were written before the machine restarted: their rows may never "
            "have reached the disk, so they are not part of the committed state (readers do "
            "not see them)",
            "run `tensorblob recover PATH` to drop them for good; this is what sync='normal' "
            "gives up on power loss (flush() or sync='full' avoid it)",
            JOURNAL,
        )
    last = j.records[-1] if j.records else None
    if last is None or last["t"] != _records.REC_SYNC or not last.get("c"):
        replay = (
            f"{loaded.kept} committed transaction(s) since the last checkpoint are to be "
            "replayed from the journal"
            if loaded.kept
            else "it committed nothing since the last checkpoint, so nothing is to be replayed"
        )
        who = (
            "the writer has not closed the blob yet"
            if sc.writer_active
            else "the last writer did not close the blob (it crashed or was killed)"
        )
        sc.add(
            "warning",
            "unclean",
            f"{who}: {replay}",
            "run `tensorblob recover PATH` (or open the blob for writing): nothing committed "
            "is lost; readers can use the blob as it is meanwhile",
            JOURNAL,
        )


def check_blocks(sc: Scan, meta: Meta) -> None:
    """Every block the state refers to exists with the right size; else salvage (b)."""
    chosen = sc.loaded or sc.salvage
    if chosen is None:
        return
    state, B = chosen.state, meta.block_size
    nbytes = meta.block_bytes
    if not sc.blocks_dir:
        sc.add(
            "warning",
            "blocks-dir-missing",
            "the blocks/ directory is missing",
            "run `tensorblob recover PATH`: it recreates it",
            BLOCKS,
        )
    first = None
    for slot, bid in enumerate(state.blocks):
        size = sc.on_disk.get(bid)
        if size == nbytes:
            continue
        a, b = slot * B, min(state.length, (slot + 1) * B)
        where = f"block {block_name(bid)} (slot {slot}, rows {a} to {b - 1})"
        if size is None:
            code, what = "block-missing", f"{where} is missing"
        else:
            code, what = "block-size", f"{where} has {size} bytes, expected {nbytes}"
            what += ": it was truncated or damaged"
        first = slot if first is None else first
        sc.add(
            "error",
            code,
            f"{what}; readers fail on those rows",
            f"restore blocks/{block_name(bid)} from a backup; otherwise `tensorblob recover "
            f"--salvage` truncates the blob to {rows_text(first * B)} (the rows before the first "
            "damaged block)",
            f"{BLOCKS}/{block_name(bid)}",
        )
    if first is None:
        return
    salvaged = copy.deepcopy(chosen)
    st = salvaged.state
    st.gen = max(st.gen, sc.journal.gen)
    dropped = st.blocks[first:]
    rows = st.length - first * B
    # The truncation, applied by the one transition as a commit record that is
    # numbered past every frame: every snapshot that exists may use the
    # dropped blocks, so their freeing must come after all of them.
    cut = _records.commit_record(first * B, first, [], [], dropped, [], st.next_id)
    st.apply({**cut, "q": _records.LAST_Q}, B, "salvage")
    st.validate(B, "salvaged state")
    sc.loaded, sc.salvage = None, salvaged
    sc.drops.rows += rows
    sc.drops.blocks += dropped
    sc.drops.lines.append(
        f"{rows_text(rows)} (rows {st.length} to {st.length + rows - 1}) in {len(dropped)} "
        f"block(s) from slot {first} on ({ids_text(dropped)}): the blob is truncated to "
        f"{rows_text(st.length)}, the rows before the first damaged block"
    )


def reserve_ids(sc: Scan, state: State) -> None:
    """Never give a salvaged state's new blocks an id the dropped state used (F8)."""
    seen = [
        r["x"] for r in [*sc.journal.records, *filter(None, sc.journal.lost)] if is_n(r.get("x"))
    ]
    state.next_id = max(state.next_id, max(sc.on_disk, default=-1) + 1, *seen)
