"""wait_for and follow: a reader sleeping until a writer in another process commits.

Writers are real child processes (the harness's fork server). Idle CPU is measured
with ``RUSAGE_THREAD`` around a wait; wake-up latency from the timestamps a writer
puts in its rows.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import harness
import pytest
import torch

from tensorblob import (
    BlobClosedError,
    BlobNotFoundError,
    BlobTypeError,
    InvalidArgumentError,
    SnapshotGoneError,
    TensorBlob,
    UnsupportedOperationError,
    WaitTimeoutError,
    _watch,
)


def new_blob(path: str, n: int = 0) -> str:
    with TensorBlob.open(path, "w", dtype="int64", shape=(), block_size=16) as blob:
        blob.write(torch.arange(n))
    return path


def _writer(path: str, sessions: list[list[int]], gap: float, crash: bool, ready: Any) -> None:
    """Append ``sessions`` (lists of batch sizes) row by row counting on; one session each open."""
    for batches in sessions:
        with TensorBlob.open(path, "a", timeout=60) as blob:
            ready.set()
            for n in batches:
                time.sleep(gap)
                blob.write(torch.arange(len(blob), len(blob) + n))
            if crash:
                os.kill(os.getpid(), signal.SIGKILL)  # holding the lock, with no close marker
        time.sleep(gap)
    os._exit(0)


def _stamper(path: str, n: int, gap: float, ready: Any) -> None:
    """Commit ``n`` single rows, each holding the monotonic clock just before its write."""
    with TensorBlob.open(path, "a", timeout=60) as blob:
        ready.set()
        for _ in range(n):
            time.sleep(gap)
            blob.write(torch.tensor(time.monotonic_ns()))
    os._exit(0)


def _unlinker(path: str, delay: float, ready: Any) -> None:
    time.sleep(delay)
    TensorBlob.unlink(path)
    os._exit(0)


@contextmanager
def child(target: Any, *args: Any, wait_ready: bool = True) -> Iterator[Any]:
    ctx = harness._context()
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready))
    proc.start()
    try:
        if wait_ready:
            assert ready.wait(20), "the child writer never opened the blob"
        yield proc
    finally:
        proc.join(60)
        if proc.exitcode is None:  # pragma: no cover - a hang is a failure
            proc.kill()


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


# -- wait_for ------------------------------------------------------------------------


def test_wait_for_returns_at_once_when_the_rows_are_there_and_moves_the_snapshot(tmp_path):
    path = new_blob(str(tmp_path / "b"), 3)
    with TensorBlob.open(path) as reader, TensorBlob.open(path, "a") as writer:
        writer.write(torch.arange(3, 5))
        assert len(reader) == 3
        t0 = time.monotonic()
        assert reader.wait_for(4) == 5
        assert time.monotonic() - t0 < 1
        assert len(reader) == 5
        assert reader[-1].item() == 4


def test_wait_for_sleeps_until_another_process_commits_enough_rows(tmp_path):
    path = new_blob(str(tmp_path / "b"))
    with TensorBlob.open(path) as reader:
        t0 = time.monotonic()
        with child(_writer, path, [[5, 5, 5, 5]], 0.1, False):
            assert reader.wait_for(20, timeout=60) >= 20
            assert time.monotonic() - t0 > 0.3  # it did wait for the later commits
        assert reader[:20].tolist() == list(range(20))


def test_wait_for_times_out_with_a_timeout_error_after_refreshing(tmp_path):
    path = new_blob(str(tmp_path / "b"), 2)
    with TensorBlob.open(path) as reader:
        with TensorBlob.open(path, "a") as writer:
            writer.write(torch.arange(2, 4))
        t0 = time.monotonic()
        with pytest.raises(WaitTimeoutError, match="4 committed rows, not the 10") as info:
            reader.wait_for(10, timeout=0.3)
        assert 0.3 <= time.monotonic() - t0 < 3
        assert isinstance(info.value, TimeoutError)
        assert len(reader) == 4  # the snapshot moved all the same


def test_wait_for_and_follow_refuse_writers_closed_blobs_and_bad_arguments(tmp_path):
    path = new_blob(str(tmp_path / "b"), 1)
    with TensorBlob.open(path, "a+") as writer:
        with pytest.raises(UnsupportedOperationError, match="open the blob with 'r'"):
            writer.wait_for(5)
        with pytest.raises(UnsupportedOperationError):
            writer.follow()
    reader = TensorBlob.open(path)
    for bad, error in [(-1, InvalidArgumentError), (1.5, BlobTypeError), (True, BlobTypeError)]:
        with pytest.raises(error):
            reader.wait_for(bad)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        reader.wait_for(1, timeout=-1)
    with pytest.raises(InvalidArgumentError, match="batch"):
        reader.follow(batch=0)
    reader.close()
    with pytest.raises(BlobClosedError):
        reader.wait_for(1)
    with pytest.raises(BlobClosedError):
        reader.follow()


# -- follow --------------------------------------------------------------------------


def test_follow_yields_every_row_in_order_and_stops_soon_after_the_writer_closes(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(_watch, "CLOSE_SECONDS", 30.0)  # no re-check could end it in time
    path = new_blob(str(tmp_path / "b"), 4)
    with TensorBlob.open(path) as reader, child(_writer, path, [[1] * 20 + [30]], 0.005, False):
        got = []
        for row in reader.follow():
            got.append(int(row))
            last = time.monotonic()
        ended = time.monotonic()
        assert reader.tell() == 54
    assert got == list(range(54))
    # The writer's close releases its lock without writing a frame: the lock file's
    # close event must wake the follower, long before its re-check would.
    assert ended - last < 10
    with TensorBlob.open(path) as again:
        t0 = time.monotonic()
        assert len(list(again.follow())) == 54  # a closed blob: what is there, then stop
        assert time.monotonic() - t0 < 0.9


def test_follow_in_batches_yields_what_is_committed_up_to_the_batch_size(tmp_path):
    path = new_blob(str(tmp_path / "b"))
    with TensorBlob.open(path) as reader, child(_writer, path, [[7, 1, 12, 3]], 0.05, False):
        batches = list(reader.follow(batch=5))
    assert all(1 <= len(b) <= 5 for b in batches)
    assert torch.cat(batches).tolist() == list(range(23))


def test_follow_waits_through_a_crashed_writer_and_stops_when_the_next_one_closes(tmp_path):
    path = new_blob(str(tmp_path / "b"))
    with child(_writer, path, [[5]], 0.0, True) as crashed:
        pass
    assert crashed.exitcode == -signal.SIGKILL
    with TensorBlob.open(path) as reader:
        rows = reader.follow(timeout=60)
        assert [int(next(rows)) for _ in range(5)] == list(range(5))
        t0 = time.monotonic()
        with child(_writer, path, [[3]], 0.5, False, wait_ready=False):
            rest = [int(r) for r in rows]  # the crash did not end it; the next close does
        assert rest == [5, 6, 7]
        assert time.monotonic() - t0 > 0.5


def test_follow_until_closed_false_spans_writer_sessions_and_stops_on_its_timeout(tmp_path):
    path = new_blob(str(tmp_path / "b"))
    with TensorBlob.open(path) as reader, child(_writer, path, [[3], [2]], 0.3, False):
        got = []
        for row in reader.follow(timeout=1.5, until_closed=False):
            got.append(int(row))
            last = time.monotonic()
        ended = time.monotonic()
    assert got == list(range(5))
    assert 1.5 <= ended - last < 5


def test_follow_and_wait_for_end_when_the_blob_is_deleted(tmp_path):
    path = new_blob(str(tmp_path / "b"), 2)
    with TensorBlob.open(path) as reader, child(_unlinker, path, 0.3, wait_ready=False):
        reader[:]  # mapped first (and tensordict imported): readable after the deletion
        assert len(list(reader.follow(timeout=30, until_closed=False))) == 2
    new_blob(path, 2)
    with (
        TensorBlob.open(path) as reader,
        child(_unlinker, path, 0.3, wait_ready=False),
        pytest.raises(BlobNotFoundError, match="deleted or moved"),
    ):
        reader.wait_for(3, timeout=30)


def test_refresh_wait_for_and_follow_after_the_blob_was_deleted(tmp_path):
    """Deleted before the call, not during it: refresh and wait_for raise BlobNotFoundError
    and the reader keeps its snapshot; follow ends (it said CorruptBlobError, NotABlobError)."""
    path = new_blob(str(tmp_path / "b"), 3)
    with TensorBlob.open(path) as reader:
        assert reader[:].tolist() == [0, 1, 2]  # mapped: readable after the deletion
        TensorBlob.unlink(path)
        with pytest.raises(BlobNotFoundError, match="deleted, moved or created again"):
            reader.refresh()
        with pytest.raises(BlobNotFoundError, match="deleted, moved or created again"):
            reader.wait_for(5, timeout=1)
        assert (len(reader), reader[:].tolist()) == (3, [0, 1, 2])
        assert list(reader.follow(timeout=1)) == [0, 1, 2]
        assert list(reader.follow(timeout=1)) == []


@pytest.mark.parametrize("again", [False, True], ids=["deleted", "created-again"])
@pytest.mark.parametrize("cached", [4, 1], ids=["mapped", "pread"])
def test_a_reader_never_reads_another_blob_at_its_path(tmp_path, again, cached):
    """A blob deleted (and created again) under an open reader: the rows it had read stay
    readable; rows of blocks it never read raise SnapshotGoneError, even where the new
    blob has block files of the same names (it read the new blob's rows before), and
    refresh() raises BlobNotFoundError."""
    path = str(tmp_path / "b")
    with TensorBlob.open(path, "w", dtype="int64", shape=(), block_size=4) as w:
        w.write(torch.arange(12))
    with TensorBlob.open(path, max_cached_blocks=cached) as reader:
        assert reader[0:4].tolist() == [0, 1, 2, 3]
        TensorBlob.unlink(path)
        if again:
            with TensorBlob.open(path, "w", dtype="int64", shape=(), block_size=4) as w:
                w.write(torch.arange(1000, 1012))
        if cached > 1:
            assert reader[1:3].tolist() == [1, 2]  # still mapped
        for read in (lambda: reader[4:12], lambda: reader[[5, 9]], lambda: reader[9]):
            with pytest.raises(SnapshotGoneError, match="deleted, moved or created again"):
                read()
        with pytest.raises(BlobNotFoundError, match="deleted, moved or created again"):
            reader.refresh()
        assert len(reader) == 12
    if again:
        with TensorBlob.open(path) as fresh:
            assert fresh[:].tolist() == list(range(1000, 1012))


# -- cost and latency ------------------------------------------------------------------


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_an_idle_wait_costs_well_under_five_percent_of_a_core(tmp_path, monkeypatch, inotify):
    monkeypatch.setattr(_watch, "USE_INOTIFY", inotify)
    path = new_blob(str(tmp_path / "b"), 1)
    with TensorBlob.open(path) as reader, TensorBlob.open(path, "a"):
        # A writer holds the lock and the journal ends with a close marker: the state in
        # which follow() re-checks the lock every second.
        t0, c0 = time.monotonic(), cpu_seconds()
        assert [int(r) for r in reader.follow(timeout=1.0)] == [0]
        with pytest.raises(WaitTimeoutError):
            reader.wait_for(2, timeout=1.0)
        wall, cpu = time.monotonic() - t0, cpu_seconds() - c0
    assert wall >= 2.0
    assert cpu < 0.05 * wall, f"{cpu:.4f} s of CPU over {wall:.2f} s idle"


def test_the_polling_fallback_sees_commits_too(tmp_path, monkeypatch):
    monkeypatch.setattr(_watch, "USE_INOTIFY", False)
    path = new_blob(str(tmp_path / "b"))
    with TensorBlob.open(path) as reader, child(_writer, path, [[2, 2]], 0.1, False):
        assert reader.wait_for(4, timeout=60) == 4
        assert [int(r) for r in reader.follow(timeout=60)] == [0, 1, 2, 3]


def test_a_commit_in_another_process_wakes_the_follower_within_milliseconds(tmp_path):
    path = new_blob(str(tmp_path / "b"))
    lags = []
    with TensorBlob.open(path) as reader, child(_stamper, path, 40, 0.02):
        for row in reader.follow(timeout=60):
            lags.append(time.monotonic_ns() - int(row))
    assert len(lags) == 40
    median_ms = statistics.median(lags) / 1e6
    assert median_ms < 50, f"median wake-up {median_ms:.2f} ms after the write started"
