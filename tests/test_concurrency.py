"""One writer, many readers, across real processes: locks, snapshots, refresh, DataLoader.

No mocked locks: every test runs real child processes against real files.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from typing import Any

import filelock
import harness
import pytest
import torch
from torch.utils.data import DataLoader

from tensorblob import LockTimeoutError, TensorBlob, UnsupportedOperationError
from tensorblob._blockfiles import parse_block_name

B = 4
NEW = {"dtype": "float32", "shape": [3], "block_size": B}


def _spawn(target: Any, *args: Any) -> Any:
    proc = harness._context().Process(target=target, args=args)
    proc.start()
    return proc


def _join_ok(procs: list[Any], timeout: float = 120) -> None:
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"child exit code {p.exitcode}"


# -- writers taking turns ---------------------------------------------------------


def _appender(path: str, who: int, sessions: int, per_session: int) -> None:
    for s in range(sessions):
        with TensorBlob.open(path, "a", timeout=60) as blob:
            for i in range(per_session):
                # Each row names its writer, session and position in the session.
                blob.write(torch.tensor([who, s, i], dtype=torch.float32))
    os._exit(0)


def test_four_writers_appending_in_turn_keep_every_row_once_and_sessions_whole(tmp_path):
    path = str(tmp_path / "blob")
    TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=64).close()
    sessions, per = 50, 10  # 500 single-row transactions per process
    _join_ok([_spawn(_appender, path, w, sessions, per) for w in range(4)])
    with TensorBlob.open(path, "r") as blob:
        got = blob[:].to(torch.int64).tolist()
    assert len(got) == 4 * sessions * per
    assert sorted(map(tuple, got)) == sorted(
        (w, s, i) for w in range(4) for s in range(sessions) for i in range(per)
    )
    # A writer holds the lock for a whole session: its rows are never interleaved.
    for start in range(0, len(got), per):
        run = got[start : start + per]
        assert {(r[0], r[1]) for r in run} == {(run[0][0], run[0][1])}
        assert [r[2] for r in run] == list(range(per))


def test_a_second_writer_times_out_with_an_error_naming_the_blob_and_holder(tmp_path):
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3) as first:
        first.write(torch.ones(3))
        t0 = time.monotonic()
        with pytest.raises(LockTimeoutError) as err:
            TensorBlob.open(path, "a", timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 5
        assert path in str(err.value)
        assert f"pid {os.getpid()}" in str(err.value)
        assert isinstance(err.value, TimeoutError)


def _holder(path: str, ready: str) -> None:
    blob = TensorBlob.open(path, "a")
    blob.write(torch.full((3,), 7.0))
    with blob.transaction():
        blob.write(torch.full((5, 3), 8.0))  # never committed
        with open(ready, "w") as f:
            f.write("x")
        time.sleep(60)


def _wait_for(path: str, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert time.monotonic() - t0 < timeout, f"child never created {path}"
        time.sleep(0.01)


def test_a_killed_lock_holder_leaves_no_stale_lock_and_its_transaction_is_undone(tmp_path):
    path, ready = str(tmp_path / "blob"), str(tmp_path / "ready")
    TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B).close()
    child = _spawn(_holder, path, ready)
    _wait_for(ready)
    with pytest.raises(LockTimeoutError):
        TensorBlob.open(path, "a", timeout=0.1)
    # A reader opened while the writer is mid-transaction sees the commit only.
    with TensorBlob.open(path, "r") as reader:
        assert torch.equal(reader[:], torch.full((1, 3), 7.0))
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    # A reader right after the death changes nothing and sees the last commit.
    before = harness.snapshot_files(path)
    with TensorBlob.open(path, "r") as reader:
        assert torch.equal(reader[:], torch.full((1, 3), 7.0))
    assert harness.snapshot_files(path) == before
    t0 = time.monotonic()
    with TensorBlob.open(path, "a", timeout=5) as blob:
        assert time.monotonic() - t0 < 1.0, "the next writer waited for a dead holder"
        assert len(blob) == 1
        assert any("uncommitted" in a for a in blob.recovery_actions)
    blocks = {parse_block_name(n) for n in os.listdir(os.path.join(path, "blocks"))}
    assert len(blocks) == 1, "the killed transaction's block was not deleted"


# -- readers while a writer changes everything -----------------------------------------


WRITER_OPS: list[list[Any]] = [
    ["open", "w", "normal", NEW],
    *[["write", 3, i] for i in range(6)],
    ["seek", 2, 0],
    ["write", 7, 20],
    ["truncate", 5],
    ["write", 9, 21],
    ["extend", "OTHER", True],
    ["extend", "OTHER", False],
    ["seek", -6, 2],
    ["txn", [["write", 2, 22], ["truncate", 11], ["write", 4, 23]]],
    ["close"],
    ["open", "w", "normal", {}],
    *[["write", 2, 30 + i] for i in range(5)],
    ["open_r+"],
]


def _writer(path: str, ops: list[list[Any]], done: str) -> None:
    ops = [op for op in ops if op[0] != "open_r+"]
    harness.child_main(path, ops, 0, done + ".acks", done + ".log")


def _reader(path: str, states: list[torch.Tensor], done: str, result: str) -> None:
    reads = snapshots = 0
    errors: list[str] = []
    seen: set[int] = set()

    def check(got: torch.Tensor, where: str) -> int:
        for k, s in enumerate(states):
            if got.shape == s.shape and torch.equal(got, s):
                return k
        errors.append(f"{where}: {len(got)} rows match no committed state")
        return -1

    def rows(got: Any) -> torch.Tensor:  # a TensorDB's records as the model holds them
        return harness.pack(got) if isinstance(got, dict) else got

    with harness.kind_of(path).open(path, "r") as blob:
        while not os.path.exists(done) or reads < 5:
            whole = rows(blob[:])
            k = check(whole, "snapshot")
            seen.add(k)
            # The same snapshot, read again piecewise while the writer goes on.
            for i in range(len(whole)):
                one = blob[i]
                one = (
                    harness.pack({k: v[None] for k, v in one.items()})[0]
                    if isinstance(one, dict)
                    else one
                )
                if not torch.equal(one, whole[i]):
                    errors.append(f"row {i} changed inside one snapshot")
                    break
            if len(whole) > 2 and not torch.equal(rows(blob[[-1, 0, 1]]), whole[[-1, 0, 1]]):
                errors.append("gather changed inside one snapshot")
            reads += 1
            blob.refresh()
            snapshots += 1
    with open(result, "w") as f:
        f.write(f"{reads} {len(seen)}\n" + "\n".join(errors))
    os._exit(0)


@pytest.mark.parametrize("records", [False, True], ids=["blob", "records"])
def test_readers_see_only_whole_committed_snapshots_while_a_writer_changes_everything(
    tmp_path, records
):
    other = str(tmp_path / "other")
    other_rows = harness.make_other(other, records)
    ops = [[x if x != "OTHER" else other for x in op] for op in WRITER_OPS]
    if records:  # the same workload on a TensorDB: every field of every row, or none
        ops[0] = ["open", "w", "normal", harness.NEW_DB]
    states = harness.expected_states([op for op in ops if op[0] != "open_r+"], {other: other_rows})
    states = [s for s in states if s is not None]
    path, done = str(tmp_path / "blob"), str(tmp_path / "done")
    harness.open_op(path, ["open", "w", "normal", ops[0][3]]).close()
    readers = [_spawn(_reader, path, states, done, str(tmp_path / f"r{i}")) for i in range(3)]
    time.sleep(0.5)
    writer = _spawn(_writer, path, ops, done)
    _join_ok([writer])
    with open(done, "w") as f:
        f.write("done")
    _join_ok(readers)
    for i in range(3):
        with open(tmp_path / f"r{i}") as f:
            head, *errors = f.read().split("\n")
        assert not [e for e in errors if e], errors[:5]
        assert int(head.split()[0]) >= 5


def test_a_long_lived_reader_keeps_its_snapshot_and_blocks_are_freed_after_it_closes(tmp_path):
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as w:
        w.write(harness.rows(8, 1))
    reader = TensorBlob.open(path, "r")
    old = reader[:]
    with TensorBlob.open(path, "r+") as w:
        w.write(harness.rows(8, 2))  # overwrites both blocks: copy-on-write
        w.truncate(3)
    assert torch.equal(reader[:], old), "the reader's snapshot changed"
    n_blocks = len(os.listdir(os.path.join(path, "blocks")))
    assert n_blocks == 3, "blocks the reader still maps were deleted"
    assert reader.refresh() == 3
    assert torch.equal(reader[:], harness.rows(3, 2))
    reader.close()
    with TensorBlob.open(path, "a"):
        pass  # a writer's close deletes what no snapshot needs any more
    assert len(os.listdir(os.path.join(path, "blocks"))) == 1


def test_a_newer_reader_does_not_hold_back_blocks_an_older_snapshot_never_had(tmp_path):
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as w:
        w.write(harness.rows(4, 1))
        w.flush()
        w.seek(0)
        w.write(harness.rows(4, 2))  # frees block 0
        w.flush()
        with TensorBlob.open(path, "r") as reader:  # sees only the new block
            w.seek(0)
            w.write(harness.rows(4, 3))  # frees block 1, which the reader maps
            w.flush()
            names = sorted(os.listdir(os.path.join(path, "blocks")))
            assert [parse_block_name(n) for n in names] == [1, 2]
            assert torch.equal(reader[:], harness.rows(4, 2))


def _hold_reader(path: str, ready: str, done: str) -> None:
    with TensorBlob.open(path, "r") as reader:
        want = reader[:]
        with open(ready, "w") as f:
            f.write(str(len(reader)))
        while not os.path.exists(done):
            time.sleep(0.01)
        assert torch.equal(reader[:], want), "the held snapshot changed"
    os._exit(0)


@pytest.mark.parametrize("checkpoint_every", [1, 8])
def test_a_reader_held_for_many_writer_sessions_holds_back_only_its_own_blocks(
    tmp_path, monkeypatch, checkpoint_every
):
    """design.md, item 8: a collector that opens, overwrites a row in place (copy-on-write
    of its block) and closes, session after session, next to a reader (another process)
    that holds one snapshot all along. Blocks copied and freed after the reader's snapshot
    are deleted once freed, also those a later session found in the manifest."""
    from tensorblob import _durability  # noqa: PLC0415

    # Checkpoint at every close, or at every 8th: the manifest then holds the new blocks.
    monkeypatch.setattr(_durability, "CLOSE_CHECKPOINT_RECORDS", 3 * checkpoint_every)
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as w:
        w.write(harness.rows(5 * B, 1))  # 5 blocks
    ready, done = str(tmp_path / "ready"), str(tmp_path / "done")
    reader = _spawn(_hold_reader, path, ready, done)
    while not os.path.exists(ready):
        time.sleep(0.01)
    for i in range(40):
        with TensorBlob.open(path, "r+") as w:
            w.seek((i % 5) * B)
            w.write(harness.rows(1, 100 + i))  # copies block i % 5 and frees its old copy
    on_disk = {parse_block_name(n) for n in os.listdir(os.path.join(path, "blocks"))}
    assert set(range(5)) <= on_disk, "a block of the reader's snapshot was deleted"
    with open(done, "w") as f:
        f.write("done")
    _join_ok([reader])
    # The 5 live blocks and the reader's 5; at most a few freed since the last checkpoint.
    assert len(on_disk) <= 10 + checkpoint_every, sorted(on_disk)
    with TensorBlob.open(path, "a"):
        pass
    assert len(os.listdir(os.path.join(path, "blocks"))) == 5


def test_a_freed_block_kept_over_a_checkpoint_keeps_when_it_was_freed(tmp_path, monkeypatch):
    """A block freed while an old reader held it stays in the free list over a checkpoint.
    The manifest keeps the sequence that freed it (``freed``), not the checkpoint's: a
    reader opened after the freeing does not hold it back once the old reader closes.
    (Readers that keep reopening would otherwise hold such blocks for ever.)"""
    from tensorblob import _durability  # noqa: PLC0415

    path = str(tmp_path / "blob")
    blocks = os.path.join(path, "blocks")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as w:
        w.write(harness.rows(2 * B, 1))
    old = TensorBlob.open(path, "r")
    with TensorBlob.open(path, "r+") as w:  # frees block 0; no checkpoint at this close
        w.write(harness.rows(1, 2))
    new = TensorBlob.open(path, "r")  # a snapshot after the freeing
    monkeypatch.setattr(_durability, "CLOSE_CHECKPOINT_RECORDS", 0)
    with TensorBlob.open(path, "a") as w:  # checkpoints with block 0 still held by `old`
        w.write(harness.rows(1, 3))
    assert 0 in {parse_block_name(n) for n in os.listdir(blocks)}
    old.close()
    with TensorBlob.open(path, "a") as w:
        w.write(harness.rows(1, 4))
    assert 0 not in {parse_block_name(n) for n in os.listdir(blocks)}
    want = harness.rows(2 * B, 1)
    want[0] = harness.rows(1, 2)[0]
    assert torch.equal(new[:], want)  # its snapshot: block 0's copy, block 1
    new.close()


def test_a_manifests_lower_bounds_of_births_are_checked_when_it_is_read(tmp_path, monkeypatch):
    """format.md F3 ``born`` and ``freed``: written at checkpoints; a manifest whose
    ``born`` is out of order, or whose ``freed`` is not aligned with ``free``, is damaged
    (CorruptBlobError), like any other bad key."""
    from tensorblob import CorruptBlobError, _durability, _format  # noqa: PLC0415

    monkeypatch.setattr(_durability, "CLOSE_CHECKPOINT_RECORDS", 0)  # every close
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as w:
        w.write(harness.rows(3 * B, 1))
        w.flush()
        w.seek(0)
        w.write(harness.rows(1, 2))  # a copy-on-write: block 3 replaces block 0
    with TensorBlob.open(path, "a") as w:  # loads generation 2, whose next_id is 4
        w.write(harness.rows(1, 3))
    manifest = os.path.join(path, "manifest")
    with open(manifest, "rb") as f:
        body = _format.decode_file(_format.MAGIC_MANIFEST, f.read(), "manifest")
    # Blocks 0-2 were born in generation 1 or later, blocks from 4 on in generation 2.
    assert body["born"] == [[0, 1 << 32], [4, 2 << 32]]
    assert len(body["freed"]) == len(body["free"])
    for key, bad in (("born", [[5, 1 << 32], [3, 1 << 32]]), ("freed", [*body["freed"], 7])):
        with open(manifest, "wb") as f:
            f.write(_format.encode_file(_format.MAGIC_MANIFEST, {**body, key: bad}))
        with pytest.raises(CorruptBlobError, match=f"bad {key} list"):
            TensorBlob.open(path, "r")


# -- pickling and DataLoader workers -----------------------------------------------------


def test_a_reader_pickles_as_its_snapshot_and_a_writer_refuses(tmp_path):
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as w:
        w.write(harness.rows(6, 1))
        with pytest.raises(UnsupportedOperationError, match="open it read-only"):
            pickle.dumps(w)
    reader = TensorBlob.open(path, "r")
    reader.seek(2)
    with TensorBlob.open(path, "a") as w:
        w.write(harness.rows(3, 2))
    copy = pickle.loads(pickle.dumps(reader))
    assert len(copy) == 6
    assert copy.tell() == 2
    assert torch.equal(copy[:], harness.rows(6, 1))
    assert copy.refresh() == 9
    copy.close()
    reader.close()


def _collector(path: str, n: int) -> None:
    with TensorBlob.open(path, "a") as blob:
        for i in range(n):
            blob.write(harness.rows(1, 1000 + i))
    os._exit(0)


# Four workers is the scenario to prove; torch warns that this machine has two cores.
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_the_snapshot_while_a_collector_appends(tmp_path, context):
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=16) as w:
        w.write(harness.rows(300, 1))
    collector = _spawn(_collector, path, 300)
    with TensorBlob.open(path, "r") as blob:
        want = blob[:]
        loader = DataLoader(
            blob, batch_size=32, num_workers=4, multiprocessing_context=context, shuffle=False
        )
        got = torch.cat(list(loader))
    _join_ok([collector])
    assert torch.equal(got, want)
    with TensorBlob.open(path, "r") as blob:
        assert len(blob) == 600


@pytest.mark.parametrize("written", [0, 2], ids=["general_path", "fast_path"])
def test_a_forked_child_cannot_write_through_its_parents_writer(tmp_path, written):
    # After two single-row writes the next one would take the fast path.
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3) as w:
        for _ in range(written):
            w.write(torch.zeros(3))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            try:
                w.write(torch.ones(3))
            except UnsupportedOperationError:
                os._exit(0)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(w) == written
        w.write(torch.ones(3))  # the parent still holds the lock and writes
    with TensorBlob.open(path, "r") as r:
        assert torch.equal(r[:], torch.cat([torch.zeros(written, 3), torch.ones(1, 3)]))


def test_a_live_forked_child_does_not_keep_the_writer_lock_after_the_parent_closes(tmp_path):
    path = str(tmp_path / "blob")
    w = TensorBlob.open(path, "w", dtype="float32", shape=3)
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only waits, holding its copy of every fd
        os.close(w_fd)
        os.read(r_fd, 1)
        os._exit(0)
    try:
        w.close()
        with TensorBlob.open(path, "a", timeout=5) as again:  # would time out if still held
            again.write(torch.ones(3))
    finally:
        os.write(w_fd, b"x")
        os.waitpid(pid, 0)
    with TensorBlob.open(path, "r") as r:
        assert len(r) == 1


def test_the_writer_lock_is_the_flock_a_filelock_on_the_lock_file_takes(tmp_path):
    path = str(tmp_path / "blob")
    TensorBlob.open(path, "w", dtype="float32", shape=3).close()
    other = filelock.FileLock(os.path.join(path, "lock"), timeout=0, thread_local=False)
    with other, pytest.raises(LockTimeoutError):
        TensorBlob.open(path, "a", timeout=0.05)
    with TensorBlob.open(path, "a", timeout=0.05), pytest.raises(filelock.Timeout):
        other.acquire(timeout=0.05)
    other.acquire(timeout=0.05)
    other.release()
