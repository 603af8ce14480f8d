"""Minimal reproducers of engine bugs found by the fuzz campaign (fuzz/, docs/fuzzing.md).

Each test fails until the engine is fixed; the docstring names the campaign
part that found it and the diagnosis.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import harness
import torch

from tensorblob import TensorBlob, _durable, _locking


def test_reader_open_is_not_refused_while_the_writer_deletes_freed_blocks(tmp_path: Any) -> None:
    """Found by the kill -9 soak (fuzz/soak.py, reader processes): G3/G4.

    While the writer deletes freed blocks (``_recovery.reap``) it holds a
    write lock on ``REAP_BYTE`` of ``readers`` (``ReaderProbe.guard``). A
    reader opening then calls ``ReaderLease.hold_everything``, a
    non-blocking ``F_OFD_SETLK`` read lock on ``[0, EOF)``, which includes
    ``REAP_BYTE``: it fails with a raw ``BlockingIOError`` (EAGAIN), so
    ``TensorBlob.open(path, "r")`` raises instead of opening a snapshot
    (tensorblob/_locking.py, ``hold_everything``). In the soak about one
    reader open in ten fails this way while writers commit and flush.
    """
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=4) as b:
        b.write(torch.zeros(8, 3))
    probe = _locking.ReaderProbe(path)
    assert probe.guard()  # what the writer holds while _recovery.reap deletes blocks
    try:
        with TensorBlob.open(path, "r") as r:
            assert len(r) == 8
    finally:
        probe.unguard()
        probe.close()


def test_a_creation_killed_before_its_rename_leaves_no_directory_behind(tmp_path: Any) -> None:
    """Found by the exhaustive catalogue (fuzz/campaign.py, every workload that creates): G4.

    ``_create`` (tensorblob/_blob.py) builds the blob in a hidden sibling
    ``.NAME.creating-XXXXXXXX`` and renames it into place. A writer killed
    before the rename leaves that directory (with ``meta``, ``manifest``,
    ``journal``, ...) next to the blob forever: the next ``open(path, "w")``
    builds a new one under another random name and nothing ever removes the
    old one. (It cannot simply delete every such sibling: one may belong to
    a creator still running; for example the creator could hold a lock on
    its hidden directory and the next creator remove those it can lock.)
    """
    work = tmp_path / "work"
    work.mkdir()
    path = str(tmp_path / "blob")
    ops = [["open", "w", "normal", harness.NEW]]
    clean = harness.run_child(path, ops, 0, str(work))
    rename = next(i for i, (step, _, _) in enumerate(clean.log, 1) if step == "rename")
    shutil.rmtree(path)
    run = harness.run_child(path, ops, rename, str(work))  # killed just before the rename
    assert run.exitcode == -9
    TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=4).close()
    assert sorted(os.listdir(tmp_path)) == ["blob", "work"]


def test_recovery_makes_a_dead_writers_unlinks_durable_before_its_checkpoint(
    tmp_path: Any,
) -> None:
    """Found by the long power-loss campaign (power/recovery, workload rollback): G4.

    A transaction that allocates a block and rolls back unlinks the block
    file without fsyncing ``blocks/``. If the writer then dies, recovery
    cannot see that file to delete it, and used to fsync ``blocks/`` only
    when replayed commits had dirtied blocks. Its checkpoint made the blob
    clean, so after a power cut that lost the unlink (but not the earlier
    creation) the block came back as an orphan that no later open removes.
    Recovery now fsyncs ``blocks/`` before it writes the checkpoint.
    """
    work = tmp_path / "work"
    work.mkdir()
    path = str(tmp_path / "blob")
    ops = [
        ["open", "w", "normal", harness.NEW],
        ["write", 4, 0],
        ["flush"],  # nothing left for recovery to sync but the unlink below
        ["rollback", [["write", 5, 4]]],  # allocates a block, then unlinks it
    ]
    clean = harness.run_child(path, ops, 0, str(work))
    unlink_at = max(i for i, (step, _p, _i) in enumerate(clean.log) if step == "unlink")
    shutil.rmtree(path)
    run = harness.run_child(path, ops, unlink_at + 2, str(work))  # dies at the next step
    assert run.exitcode == -9
    steps: list[tuple[str, str]] = []
    _durable.set_fault_hook(lambda step, p, extent: steps.append((step, p)))
    try:
        with TensorBlob.open(path, "a") as blob:
            assert blob.recovery_actions
    finally:
        _durable.set_fault_hook(None)
    blocks_dir = os.path.join(path, "blocks")
    renames = [i for i, (step, p) in enumerate(steps) if step == "rename"]
    dir_syncs = [i for i, (step, p) in enumerate(steps) if step == "fsync_dir" and p == blocks_dir]
    assert renames, "recovery wrote no checkpoint"
    assert dir_syncs, "recovery never fsynced blocks/"
    assert dir_syncs[0] < renames[0]


def _steps_of(fn: Any) -> list[tuple[str, str]]:
    steps: list[tuple[str, str]] = []
    _durable.set_fault_hook(lambda step, p, extent: steps.append((step, p)))
    try:
        fn()
    finally:
        _durable.set_fault_hook(None)
    return steps


def test_unlink_and_the_sweep_make_removed_leftovers_durable(tmp_path: Any) -> None:
    """Found by the long power-loss campaign (power/workload, workload unlink, ns=mix): G4.

    ``unlink`` renamed the blob to a tombstone, fsynced the parent, then
    removed the tombstone without fsyncing the parent again; the sweep of
    leftovers did the same. When a creation of the same name followed, a
    power cut that kept the creation's rename but not the earlier rmdir
    (metadata not reaching the disk in order) brought the tombstone back
    next to the new blob, where nothing removed it. Both now fsync the parent
    after removing a leftover, before the name is used again.
    """
    path = str(tmp_path / "blob")
    parent = str(tmp_path)
    TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=4).close()
    steps = _steps_of(lambda: TensorBlob.unlink(path))
    rmdirs = [i for i, (s, p) in enumerate(steps) if s == "rmdir" and ".blob.deleting-" in p]
    syncs = [i for i, (s, p) in enumerate(steps) if s == "fsync_dir" and p == parent]
    assert rmdirs, "unlink removed no tombstone"
    assert any(i > rmdirs[-1] for i in syncs), "the tombstone's removal is not made durable"

    leftover = tmp_path / ".blob.deleting-0badf00d"  # an unlink that died
    leftover.mkdir()
    (leftover / "meta").write_bytes(b"x")
    steps = _steps_of(lambda: TensorBlob.open(path, "w", dtype="float32", shape=3).close())
    assert not leftover.exists()
    gone = max(i for i, (s, p) in enumerate(steps) if s == "rmdir" and p == str(leftover))
    made = min(i for i, (s, p) in enumerate(steps) if s == "mkdir" and ".blob.creating-" in p)
    syncs = [i for i, (s, p) in enumerate(steps) if s == "fsync_dir" and p == parent]
    assert any(gone < i < made for i in syncs), "the sweep's removal is not durable first"


def test_every_mutation_of_the_durability_code_still_applies(tmp_path: Any) -> None:
    """fuzz/mutate.py edits the engine's source by text: a refactor must not leave a
    mutation behind that no longer finds its code (it would then prove nothing)."""
    fuzz = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
    if fuzz not in sys.path:
        sys.path.insert(0, fuzz)
    import mutate  # noqa: PLC0415 - fuzz/ joins sys.path only here

    for m in mutate.MUTATIONS:
        dest = tmp_path / m.name / "tensorblob"
        mutate.apply(m, str(dest))  # raises NotApplicable naming the edit


def test_the_fuzz_compares_a_real_kill_with_the_trace_without_the_tombstones_lock_owner(
    tmp_path: Any,
) -> None:
    """scripts/fuzz --seed 22 noted "unlink: traced image and real SIGKILL differ" at a step
    where the blob was a tombstone: the owner line in its ``lock`` (a pid) differs from run
    to run, and the comparison excluded only the blob's own ``lock``. A campaign bug, not an
    engine one: a real SIGKILL at every tombstone step must match the traced image."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz"))
    import campaign  # noqa: PLC0415
    import core  # noqa: PLC0415

    ops, _states = core.prepare(campaign.CATALOGUE["unlink"], str(tmp_path))
    world = str(tmp_path / "w")
    core.materialize(((), {}), world)
    tr = core.trace(world, ops)
    tomb = [
        n
        for n in range(1, len(tr.steps) + 1)
        if any(f.startswith(".blob.deleting-") and f.endswith("/lock") for f in tr.at(n)[0][1])
    ]
    assert tomb
    for n in tomb[:3]:
        assert core.verify_sigkill(str(tmp_path / "kill"), ops, tr, n, ((), {})) is None
