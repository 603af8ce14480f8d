"""I/O errors at every disk step: the call fails cleanly, committed data is never lost.

An OSError is injected (through the seam in tensorblob._durable) before the
N-th disk step of a workload, for every N. The failing call must raise; if
the failure came at or after a commit point the handle gives itself up
(BlobIOError, then BlobClosedError) rather than write on after a torn frame
or a failed fsync. Reopening must show the state before or after the
failing transaction, and the blob must keep working.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import Any

import harness
import pytest
import torch

from tensorblob import BlobClosedError, BlobIOError, TensorBlob, TensorDB, _durability, _durable
from tensorblob._blockfiles import parse_block_name
from tensorblob._meta import read_meta
from tensorblob._snapshot import load

B = 4


def _workload(blob: TensorBlob) -> list[Any]:
    """Transactions as callables; each changes the blob."""
    return [
        lambda: blob.write(harness.rows(3, 1)),
        lambda: blob.write(harness.rows(6, 2)),
        lambda: (blob.seek(1), blob.write(harness.rows(4, 3))),
        lambda: blob.truncate(5),
        lambda: blob.write(harness.rows(2, 4)),
        blob.flush,
        lambda: blob.write(harness.rows(1, 5)),
    ]


def _model_states() -> list[torch.Tensor]:
    m = harness.Model()
    m.apply(["open", "w+", "full", {"block_size": B}])
    states = [m.data.clone()]
    for op in (
        ["write", 3, 1],
        ["write", 6, 2],
        ["txn", [["seek", 1, 0], ["write", 4, 3]]],
        ["truncate", 5],
        ["write", 2, 4],
        ["flush"],
        ["write", 1, 5],
    ):
        m.apply(op)
        states.append(m.data.clone())
    return states


class _Fail:
    def __init__(self, at: int) -> None:
        self.at, self.count = at, 0

    def __call__(self, step: str, path: str, extent: Any) -> None:
        self.count += 1
        if self.count == self.at:
            raise OSError(errno.EIO, f"injected at {step} of {os.path.basename(path)}")


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_an_io_error_at_any_step_never_loses_or_tears_a_commit(tmp_path: Any, sync: str) -> None:
    states = _model_states()
    old_bound = _durability.CHECKPOINT_BYTES
    _durability.CHECKPOINT_BYTES = 400  # checkpoints inside the workload too
    try:
        counter = _Fail(0)
        _durable.set_fault_hook(counter)
        with TensorBlob.open(
            tmp_path / "count", "w+", dtype="float32", shape=3, block_size=B, sync=sync
        ) as blob:
            for op in _workload(blob):
                op()
        total = counter.count
        for n in range(1, total + 1):
            path = tmp_path / f"b{n}"
            with TensorBlob.open(path, "w+", dtype="float32", shape=3, block_size=B, sync=sync):
                pass
            fail = _Fail(n + 10_000)  # counted from the workload's open on
            _durable.set_fault_hook(fail)
            done = 0
            failed = False
            try:
                blob = TensorBlob.open(path, "r+", sync=sync)
                fail.at = fail.count + n  # only the workload's own steps
                for op in _workload(blob):
                    op()
                    done += 1
                blob.close()
            except OSError as exc:
                failed = True
                if isinstance(exc, BlobIOError):
                    with pytest.raises(BlobClosedError):
                        len(blob)
                blob.close()
            finally:
                _durable.set_fault_hook(None)
            got = harness.read_all(str(path))
            allowed = states[done : done + 2] if failed else states[-1:]
            assert any(harness.same(got, s) for s in allowed), (
                f"EIO at workload step {n}: {len(got)} rows, after {done} calls"
            )
            harness.exercise(str(path))
            meta = read_meta(str(path))
            st = load(str(path), meta).state
            on_disk = {parse_block_name(x) for x in os.listdir(path / "blocks")}
            assert set(st.blocks) <= on_disk
    finally:
        _durable.set_fault_hook(None)
        _durability.CHECKPOINT_BYTES = old_bound


def test_a_block_moved_by_extend_stays_protected_for_an_older_reader(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, other = tmp_path / "b", tmp_path / "o"
    with TensorBlob.open(other, "w", dtype="float32", shape=3, block_size=B) as o:
        o.write(harness.rows(4, 9))
    with monkeypatch.context() as m:
        m.setattr(_durability, "CHECKPOINT_BYTES", 1)  # block 1 then comes from the manifest
        with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as w:
            w.write(harness.rows(6, 1))  # block 0 full, block 1 holds rows 4-5
    reader = TensorBlob.open(path, "r", max_cached_blocks=1)  # re-maps blocks as it goes
    want = reader[:]
    with TensorBlob.open(path, "a") as w, TensorBlob.open(other, "r") as o:
        w.extend(o, maintain_order=False)  # block 1 moves after the copied block
    with TensorBlob.open(path, "r+") as w:  # replays the journal, then frees block 1
        w.truncate(4)
    assert torch.equal(reader[0], want[0])  # evicts block 1 from the reader's cache
    assert torch.equal(reader[:], want)  # maps block 1 again: it must still exist
    reader.close()


def test_a_durable_point_over_more_dirty_blocks_than_open_files_allowed(tmp_path: Any) -> None:
    """close() fsyncs every block written since the last durable point, in batches."""
    import resource  # noqa: PLC0415 - only this test needs it

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        path = tmp_path / "b"
        with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=1) as blob:
            for i in range(600):  # 600 commits, each writes a new block: 600 dirty blocks
                blob.write(torch.full((3,), float(i)))
        with TensorBlob.open(path, "r") as r:
            assert torch.equal(r[:][:, 0], torch.arange(600, dtype=torch.float32))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def _journal_flush_fails() -> Iterator[None]:
    """Every fdatasync of a journal fails with EIO while inside."""

    def hook(step: str, p: str, extent: Any) -> None:
        if step == "fdatasync" and os.path.basename(p) == "journal":
            raise OSError(errno.EIO, "injected")

    old = _durable.set_fault_hook(hook)
    try:
        yield
    finally:
        _durable.set_fault_hook(old)


@pytest.mark.parametrize("rows", [1, 40])  # a logged append; a commit by the general path
def test_a_failed_flush_of_a_full_commit_does_not_claim_it_survives_power_loss(
    tmp_path: Any, rows: int
) -> None:
    """The journal's fdatasync, the commit point for power loss under sync="full", fails:
    the record is written, so the error must not say the transaction is durable."""
    path = str(tmp_path / "b")
    blob = TensorBlob.open(path, "w", dtype="float32", shape=(4,), block_size=16, sync="full")
    blob.write(torch.zeros(2, 4))
    with _journal_flush_fails(), pytest.raises(BlobIOError) as got:
        blob.write(torch.ones(rows, 4))
    assert got.value.errno == errno.EIO
    assert "flush that makes it survive power loss failed" in str(got.value)
    assert "This transaction is committed" not in str(got.value)
    with TensorBlob.open(path, "r") as r:  # same boot: the next open decides (here: there)
        assert len(r) == 2 + rows


def test_a_given_up_database_says_database(tmp_path: Any) -> None:
    path = str(tmp_path / "db")
    schema = {"x": ("float32", (2,)), "y": ("int64", ())}
    db = TensorDB.open(path, "w", schema=schema, sync="full")
    with _journal_flush_fails(), pytest.raises(BlobIOError) as got:
        db.write({"x": torch.zeros(2), "y": torch.tensor(1)})
    assert str(got.value).startswith(f"[Errno 5] database {path!r}: ")
    assert "reopen the database" in str(got.value)
