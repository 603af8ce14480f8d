"""Reading a committed snapshot, and the writer's recovery after a crash (F9, docs/design.md).

``load`` builds the newest committed State from manifest + journal without
changing any file: readers use it as is. It applies the power-loss rule:
commit records after the last *durable marker* (a sync record, or a commit
made with ``sync="full"``) are kept only if they were written during the
current kernel boot. Same boot means only the process died, and the page
cache still holds every row those commits reference; another boot means the
machine lost power or restarted, and those rows may never have reached the
disk, so those commits are discarded as if they had never happened.

``recover`` is the writer's half: it makes the replayed commits durable,
removes what crashed transactions left behind, and checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import _durable, _format, _locking
from ._blockfiles import BlockFiles
from ._journal import JOURNAL, JournalImage, read_journal, stage_journal
from ._manifest import MANIFEST, read_manifest, stage_manifest
from ._meta import Meta
from ._state import State
from .errors import CorruptBlobError

_RETRIES = 50


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
        return last is not None and last["t"] == _format.REC_SYNC and bool(last.get("c"))


def load(root: str, meta: Meta) -> Loaded:
    """Read the newest committed snapshot; retry if a checkpoint races with the read."""
    for _ in range(_RETRIES):
        state = read_manifest(root, meta.uuid, meta.block_size)
        journal = read_journal(root, meta.uuid)
        if journal.gen < state.gen:  # checkpoint between manifest and journal renames
            return Loaded(state, None)
        if journal.base == state.gen:  # after a checkpoint or a rotation (F7)
            return _replay(state, journal, meta)
        if journal.base < state.gen:  # only damage gets here (see F7)
            break
        # journal.base > state.gen: we read the manifest just before a checkpoint
        # replaced both; read again.
    copied = "manifest" if journal.base > state.gen else "journal"
    raise CorruptBlobError(
        f"journal of {root!r} follows generation {journal.base} but the manifest is "
        f"generation {state.gen}; the {copied} may have been replaced by an older copy"
    )


def _last_durable(records: list[dict[str, Any]], end: int | None = None) -> int:
    """Index of the last durable marker (a sync or ``d`` record) below ``end``; -1 if none."""
    for i in range(len(records) if end is None else end)[::-1]:
        if records[i]["t"] == _format.REC_SYNC or records[i].get("d"):
            return i
    return -1


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
    boot, now = None, _durable.boot_id()
    for i, rec in enumerate(records):
        b = rec.get("b")
        if rec["t"] == _format.REC_OPEN:
            boot = b
        elif b is None:
            b = boot
        if i > last_durable and b != now:
            return last_durable + 1
    return len(records)


def _replay(state: State, journal: JournalImage, meta: Meta) -> Loaded:
    # Snapshots are numbered in the journal's generation, which a rotation
    # moved past the manifest's (F7): the state takes it on.
    state.gen = journal.gen
    records = journal.records
    keep = applied(records)
    discarded = sum(rec["t"] in _format.COMMITS for rec in records[keep:])
    loaded = Loaded(state, journal, discarded=discarded)
    last_durable = _last_durable(records, keep)
    what = f"journal of generation {journal.gen}"
    B, APPEND, i = meta.block_size, _format.REC_APPEND, 0
    while i < keep:
        j = i + 1
        if records[i]["t"] == APPEND:  # a run of appends (a collector's commits): one pass
            # The run stops after the last durable marker, which may be an append.
            while j < keep and j != last_durable + 1 and records[j]["t"] == APPEND:
                j += 1
            written = state.apply_appends(records[i:j], B, what)
        else:
            written = state.apply(records[i], B, what)
        if records[i]["t"] in _format.COMMITS:
            loaded.kept += j - i
            if i > last_durable:
                loaded.dirty.update(written)
        i = j
    if loaded.kept:
        state.validate(meta.block_size, f"{what}: after replay")
    return loaded


def new_sums(
    state: State,
    blocks: BlockFiles,
    bids: Iterable[int],
    rows_after: dict[int, int] | None = None,
) -> list[list[int]]:
    """The checksums that cover the committed rows of the live blocks in ``bids`` (F3),
    as a record's ``cs``: ``[[bid, rows, crc], ...]``, for the blocks whose rows grew.

    A block's checksum covers its first ``rows`` rows; rows below the
    high-water mark (``rows_after[bid]``, by default the state's) never
    change, so only the rows past the block's current checksum are read. The
    state is not changed: the record (or manifest) that makes the rows
    durable carries the result, and ``State.apply`` (``apply_sums``) records
    it. The caller has made those rows durable, or is about to, before the
    record.
    """
    hwm, sums, out = state.hwm, state.sums, []
    for bid in sorted(bids):
        h = hwm.get(bid) if rows_after is None else rows_after.get(bid, hwm.get(bid))
        if h is None:  # freed since it was written
            continue
        rows, crc = sums.get(bid, (0, 0))
        if h > rows:
            out.append([bid, h, blocks.crc(bid, rows, h, crc)])
    return out


# Past this many bytes to checksum, the checksums are computed on a thread
# while the blocks are fsynced: zlib releases the GIL, fsync waits on the
# device. Below it a thread costs more than it saves.
SUM_THREAD_BYTES = 8 << 20


def sync_and_sum(
    state: State, blocks: BlockFiles, dirty: set[int], *, new_files: bool, sums: Iterable[int]
) -> list[list[int]]:
    """Fsync the ``dirty`` blocks (and ``blocks/`` if ``new_files``), and compute the
    ``new_sums`` of the blocks in ``sums``; the two overlap when there is much to checksum."""
    ids = [b for b in sums if b in state.hwm]
    todo = sum(state.hwm[b] - state.sums.get(b, (0, 0))[0] for b in ids)
    if todo * blocks.meta.row_bytes < SUM_THREAD_BYTES:
        if dirty or new_files:
            blocks.sync(dirty, new_files=new_files)
        return new_sums(state, blocks, ids)
    result: list[list[int]] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            result.extend(new_sums(state, blocks, ids))
        except BaseException as exc:  # raised in the caller's thread below
            failed.append(exc)

    worker = threading.Thread(target=work, name="tensorblob-checksums")
    worker.start()
    try:
        blocks.sync(dirty, new_files=new_files)
    finally:
        worker.join()
    if failed:
        raise failed[0]
    return result


def verify_checksums(state: State, blocks: BlockFiles) -> tuple[int, list[int]]:
    """Recompute the checksum of every live block that has one; return (checked, damaged ids)."""
    have = [b for b in state.blocks if b in state.sums]
    damaged = [b for b in have if blocks.crc(b, 0, state.sums[b][0]) != state.sums[b][1]]
    return len(have), damaged


def stage_checkpoint(
    root: str,
    state: State,
    block_size: int,
    *,
    closed: bool = False,
    sums: list[list[int]] | None = None,
) -> tuple[int, int]:
    """Stage the next generation's manifest and an empty journal; return (gen, salt).

    Writes ``manifest.tmp`` and ``journal.tmp``, each fsynced: every byte of
    disk space the checkpoint needs is taken here, before its commit point.
    Nothing a reader sees changes. If staging fails (a full disk), what was
    staged is removed again, best effort, and the error is raised. With
    ``closed``, the new journal starts with a close marker. ``sums``: checksums
    (``new_sums``) the manifest records beyond the state's, which the caller
    applies to the state once the checkpoint is installed.
    """
    gen = state.gen + 1
    stage_manifest(root, state, block_size, gen, sums)
    try:
        salt = stage_journal(root, state.uuid, gen, closed=closed)
    except BaseException:
        with contextlib.suppress(OSError):
            _durable.unlink(os.path.join(root, MANIFEST + ".tmp"), missing_ok=True)
        raise
    return gen, salt


def install_checkpoint(root: str, state: State, gen: int) -> None:
    """Put a staged checkpoint in place: rename the manifest (the commit point), fsync the
    directory, rename the journal, fsync the directory.

    A crash between the two renames leaves a journal of the previous
    generation, which ``load`` ignores, and a stray ``journal.tmp``, which
    recovery removes.
    """
    _durable.install(os.path.join(root, MANIFEST))
    state.gen = gen
    state.seq = _locking.snapshot_seq(gen, 0)
    _durable.install(os.path.join(root, JOURNAL))


def checkpoint(
    root: str, state: State, block_size: int, blocks: BlockFiles, *, closed: bool = False
) -> int:
    """Write ``state`` as the next generation's manifest, with every block's checksum
    extended over all its rows, and start an empty journal.

    The caller has made every block the state references durable. Returns
    the new journal's salt.
    """
    sums = new_sums(state, blocks, state.blocks)
    gen, salt = stage_checkpoint(root, state, block_size, closed=closed, sums=sums)
    install_checkpoint(root, state, gen)
    state.apply_sums(sums, "checkpoint")
    return salt


def reap(state: State, blocks: BlockFiles, probe: _locking.ReaderProbe) -> int:
    """Delete the freed blocks no open snapshot can need; return how many.

    The caller has made the commits that freed them durable. A block first
    used at sequence ``born`` and freed at ``F`` is kept while an open
    reader's snapshot lies in ``[born, F)``.
    """
    if not state.free or not probe.guard():
        return 0
    try:
        return _reap_guarded(state, blocks, probe)
    finally:
        probe.unguard()


def _reap_guarded(state: State, blocks: BlockFiles, probe: _locking.ReaderProbe) -> int:
    verdict: dict[tuple[int, int], bool] = {}
    gone = []
    for bid in state.free:
        span = (state.born.get(bid, 0), state.freed_at.get(bid, state.seq + 1))
        if span not in verdict:
            verdict[span] = not probe.readers_in(*span)
        if verdict[span]:
            gone.append(bid)
    if not gone:
        return 0
    try:
        for bid in gone:
            blocks.delete(bid)
        _durable.fsync_dir(blocks.dir)
    except OSError:
        # Best effort: the blocks stay listed as free, and a later reap (or
        # recovery) deletes them. Committed data is not affected.
        return 0
    for bid in gone:
        state.freed_at.pop(bid, None)
        state.born.pop(bid, None)
    dead = set(gone)
    state.free[:] = [b for b in state.free if b not in dead]
    return len(gone)


_TEMPS = (MANIFEST + ".tmp", JOURNAL + ".tmp")


def has_strays(root: str) -> bool:
    """True if a checkpoint's temporary file was left behind (a crash, maybe a power cut).

    The journal may still look clean: a power cut during a recovery can drop
    the unsynced records that made it unclean, but not the recovery's
    temporary file. The writer's open then recovers anyway, to remove it.
    """
    return any(os.path.exists(os.path.join(root, name)) for name in _TEMPS)


def recover(root: str, meta: Meta, blocks: BlockFiles, loaded: Loaded) -> list[str]:
    """Bring the blob to a clean checkpoint after an unclean shutdown; return what was done.

    Runs under the writer lock. Idempotent: a crash at any step leaves a blob
    that the next call recovers to the same state.
    """
    state = loaded.state
    actions: list[str] = []
    if loaded.kept:
        actions.append(f"replayed {loaded.kept} committed transaction(s) from the journal")
    if loaded.discarded:
        actions.append(
            f"discarded {loaded.discarded} transaction(s) committed with sync='normal' "
            "before a power loss or reboot (their rows may not have reached the disk)"
        )
    if loaded.journal is not None and loaded.journal.torn:
        actions.append(
            f"discarded a torn journal tail of {loaded.journal.size - loaded.journal.end} bytes"
        )
    for bid in state.blocks:  # never checkpoint a state whose rows are gone
        blocks.check_file(bid)
    # Always fsync blocks/ too: the dead writer may have unlinked block files
    # (a rollback) without making that durable. Recovery cannot see them to
    # delete them again, so after its checkpoint a power cut must not bring
    # them back as orphans of a blob that then looks clean.
    blocks.sync(loaded.dirty, new_files=True)
    for name in _TEMPS:
        path = os.path.join(root, name)
        if os.path.exists(path):
            _durable.unlink(path)
            actions.append(f"removed stray temporary file {name}")
    on_disk, _others = blocks.list_ids()
    orphans = on_disk - set(state.blocks) - set(state.free)
    for bid in sorted(orphans):
        blocks.delete(bid)
    if orphans:
        _durable.fsync_dir(blocks.dir)
        actions.append(f"deleted {len(orphans)} block(s) of uncommitted transactions")
    checkpoint(root, state, meta.block_size, blocks)
    actions.append(f"wrote checkpoint generation {state.gen} ({state.length} rows)")
    probe = _locking.ReaderProbe(root)
    try:
        n = reap(state, blocks, probe)
    finally:
        probe.close()
    if n:
        actions.append(f"deleted {n} freed block(s)")
    return actions
