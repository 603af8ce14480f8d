"""The writer's durability work: checksums, checkpoints, deferred deletions, recovery.

``recover`` resolves a crash (docs/design.md, "Recovery"): it makes the
commits that ``_snapshot.load`` replayed durable, removes what crashed
transactions left behind, and checkpoints. ``checkpoint`` (staged, then
installed), ``reap`` (freed blocks no snapshot needs) and ``new_sums``
(the checksums of rows becoming durable) serve the engine too. Pure Python:
block files are handled through ``_blockfiles``, never mapped.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import _durable, _locking
from ._blockfiles import BLOCKS, BlockFiles, sum_mismatch
from ._journal import JOURNAL, stage_journal
from ._locking import LOCK, READERS
from ._manifest import MANIFEST, stage_manifest
from ._meta import META, Meta
from ._snapshot import Loaded
from ._state import State


def new_sums(
    state: State,
    blocks: BlockFiles,
    bids: Iterable[int],
    rows_after: dict[int, int] | None = None,
) -> list[list[int]]:
    """The checksums that cover the committed rows of the live blocks in ``bids`` (F3),
    as a record's ``cs``: ``[[bid, rows, crc, ...], ...]`` (a crc per field), for the
    blocks whose rows grew.

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
        rows, crcs = sums.get(bid, (0, None))
        if h > rows:
            out.append([bid, h, *blocks.crc(bid, rows, h, crcs)])
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
    result: list[list[int]] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            result.extend(new_sums(state, blocks, ids))
        except BaseException as exc:  # raised in the caller's thread below
            failed.append(exc)

    worker = None
    if todo * blocks.meta.row_bytes >= SUM_THREAD_BYTES:
        worker = threading.Thread(target=work, name="tensorblob-checksums")
        try:
            worker.start()
        except RuntimeError:  # no thread to be had (memory, or a thread limit): sum here
            worker = None
    if worker is None:
        if dirty or new_files:
            blocks.sync(dirty, new_files=new_files)
        return new_sums(state, blocks, ids)
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
    damaged = []
    for b in have:
        rows, want = state.sums[b]
        if sum_mismatch(blocks.meta, b, 0, rows, blocks.crc(b, 0, rows), want):
            damaged.append(b)
    return len(have), damaged


def stage_checkpoint(
    root: str,
    state: State,
    block_size: int,
    *,
    closed: bool = False,
    sums: list[list[int]] | None = None,
    logged: bool = False,
) -> tuple[int, int]:
    """Stage the next generation's manifest and an empty journal; return (gen, salt).

    Writes ``manifest.tmp`` and ``journal.tmp``, each fsynced: every byte of
    disk space the checkpoint needs is taken here, before its commit point.
    Nothing a reader sees changes. If staging fails (a full disk), what was
    staged is removed again, best effort, and the error is raised. With
    ``closed``, the new journal starts with a close marker; with ``logged``, it
    is version 5 (rows logged in records, F6 ``r``). ``sums``: checksums
    (``new_sums``) the manifest records beyond the state's, which the caller
    applies to the state once the checkpoint is installed.
    """
    gen = state.gen + 1
    stage_manifest(root, state, block_size, gen, sums)
    try:
        salt = stage_journal(root, state.uuid, gen, closed=closed, logged=logged)
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
    state.at_manifest()
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
    """Delete the freed blocks no open snapshot can need; return how many files it deleted
    (a writer may have deleted some of them already, before a crash or its close).

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
        span = (state.birth(bid), state.freed_at.get(bid, state.seq + 1))
        if span not in verdict:
            verdict[span] = not probe.readers_in(*span)
        if verdict[span]:
            gone.append(bid)
    if not gone:
        return 0
    try:
        deleted = sum(blocks.delete(bid) for bid in gone)
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
    return deleted


# The files of a blob directory (F1-F8, "Locks"): every other name is foreign.
TEMPS = (MANIFEST + ".tmp", JOURNAL + ".tmp")  # a checkpoint's staged files
KNOWN_FILES = frozenset({META, MANIFEST, JOURNAL, BLOCKS, LOCK, READERS, *TEMPS})


def has_strays(root: str) -> bool:
    """True if a checkpoint's temporary file was left behind (a crash, maybe a power cut).

    The journal may still look clean: a power cut during a recovery can drop
    the unsynced records that made it unclean, but not the recovery's
    temporary file. The writer's open then recovers anyway, to remove it.
    """
    return any(os.access(os.path.join(root, name), os.F_OK) for name in TEMPS)


@dataclass(frozen=True)
class Step:
    """One step of recovery: its stable ``code``, and its words before and after.

    ``plan`` is what ``recover`` would do (``tensorblob recover --dry-run``
    prints it), ``done`` what it did (``recovery_actions``, ``recover``).
    """

    code: str
    plan: str
    done: str
    data: tuple[Any, ...] = ()


def plan(
    root: str, blocks: BlockFiles, loaded: Loaded, *, reclaimable: int = 0, salvage: bool = False
) -> list[Step]:
    """The steps ``recover`` takes on ``loaded``, in order; reads only, changes nothing.

    ``reclaimable``: freed blocks no reader needs now (a count only ``check``'s
    reader census knows; ``recover`` reports what it actually deleted).
    ``salvage``: orphans are dropped by a salvage, which reports them itself.
    """
    state, j, steps = loaded.state, loaded.journal, []
    if loaded.kept:
        n = f"{loaded.kept} committed transaction(s) from the journal"
        steps.append(Step("replay", f"replay {n}", f"replayed {n}"))
    if loaded.discarded:
        n = (
            f"{loaded.discarded} transaction(s) committed with sync='normal' before a power "
            "loss or reboot (their rows may not have reached the disk)"
        )
        steps.append(Step("discard", f"discard {n}", f"discarded {n}"))
    if j is not None and j.torn:
        n = f"a torn journal tail of {j.size - j.end} bytes"
        steps.append(Step("torn", f"discard {n}", f"discarded {n}"))
    if state.logged:
        k = len({bid for bid, _, _ in state.logged})
        n = f"rows that sync='full' commits logged in the journal into {k} block file(s)"
        steps.append(Step("redo", f"write {n}", f"wrote {n}"))
    if loaded.dirty:
        n = f"{len(loaded.dirty)} block file(s) written since the last durable point"
        steps.append(Step("fsync", f"fsync {n}", f"fsynced {n}"))
    for name in TEMPS:
        if os.path.exists(os.path.join(root, name)):
            n = f"stray temporary file {name}"
            steps.append(Step("temp", f"remove {n}", f"removed {n}", (name,)))
    on_disk, _others = blocks.list_ids() if os.path.isdir(blocks.dir) else (set(), [])
    orphans = sorted(on_disk - set(state.blocks) - set(state.free))
    if orphans:
        n = f"{len(orphans)} block(s) of uncommitted transactions"
        words = "" if salvage else f"delete {n}"  # a salvage's drop line lists them
        steps.append(Step("orphans", words, f"deleted {n}", tuple(orphans)))
    n = f"checkpoint generation {state.gen + 1} ({state.length} rows)"
    steps.append(Step("checkpoint", f"write {n}", f"wrote {n}"))
    if reclaimable:
        steps.append(_reap_step(reclaimable))
    return steps


def _reap_step(n: int) -> Step:
    return Step("reap", f"delete {n} freed block(s)", f"deleted {n} freed block(s)")


def recover(root: str, meta: Meta, blocks: BlockFiles, loaded: Loaded) -> list[Step]:
    """Bring the blob to a clean checkpoint after an unclean shutdown: carry out ``plan``.

    Runs under the writer lock. Returns the steps taken (the freed blocks
    deleted, if any, last). Idempotent: a crash at any step leaves a blob
    that the next call recovers to the same state.
    """
    state = loaded.state
    for bid in state.blocks:  # never checkpoint a state whose rows are gone
        blocks.check_file(bid)
    steps = plan(root, blocks, loaded)
    # Rows that commits logged in their records, which a power cut may have
    # kept from the block files, are written there again (the same bytes),
    # then fsynced with the other blocks written since the last durable point.
    for bid, off, data in state.logged:
        path = blocks.path(bid)
        if os.path.exists(path):  # else freed and deleted since
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _durable.overwrite(fd, data, off, path)
            finally:
                os.close(fd)
    state.logged.clear()
    # Always fsync blocks/ too: the dead writer may have unlinked block files
    # (a rollback) without making that durable. Recovery cannot see them to
    # delete them again, so after its checkpoint a power cut must not bring
    # them back as orphans of a blob that then looks clean.
    blocks.sync(loaded.dirty, new_files=True)
    for step in steps:
        if step.code == "temp":
            _durable.unlink(os.path.join(root, step.data[0]))
        elif step.code == "orphans":
            for bid in step.data:
                blocks.delete(bid)
            _durable.fsync_dir(blocks.dir)
        elif step.code == "checkpoint":
            checkpoint(root, state, meta.block_size, blocks)
    probe = _locking.ReaderProbe(root)
    try:
        n = reap(state, blocks, probe)
    finally:
        probe.close()
    return [*steps, _reap_step(n)] if n else steps
