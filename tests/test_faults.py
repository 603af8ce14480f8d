"""Faults on real filesystems (G7, G8): a full disk, a read-only remount, a shortened block
file, flipped bytes, no permission.

The disks are real: a tmpfs with ``size=`` and an ext4 image on a loop device,
mounted for each test (tests/mounts.py) and unmounted even when it fails.
Writers run in child processes, so that a signal (the SIGBUS of a store into
a hole of a full disk) shows as a negative exit code instead of killing the
test run. Every acknowledged row is checked in this process afterwards.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import shutil
import signal
import tempfile
from typing import Any

import harness
import mounts
import pytest
import torch

from tensorblob import (
    BlobPermissionError,
    BlobTypeError,
    CorruptBlobError,
    DiskFullError,
    InvalidArgumentError,
    ReadOnlyFilesystemError,
    TensorBlob,
    TensorBlobError,
    TensorDB,
    _check,
    _deep,
    _durability,
    copy_blob,
)
from tensorblob._cli import main as cli
from tensorblob.errors import from_os_error

ROW = (2048,)  # 8 KiB rows: a few hundred fill a test filesystem
ROW_BYTES = 8192
SMALL_DISK_KIB = {"tmpfs": 4096, "ext4": 6144}
BALLAST = 1 << 20  # freed to let appends resume


def rows(start: int, n: int) -> torch.Tensor:
    """Rows ``start .. start+n-1``; row i holds the value i everywhere."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, *ROW).clone()


def assert_rows(path: str, n: int) -> None:
    with TensorBlob.open(path, "r") as blob:
        assert len(blob) == n
        got = blob[:]
    assert torch.equal(got, rows(0, n))


def _fill_child(path: str, sync: str, batch: int, block_size: int | None, conn: Any) -> None:
    """Append ``batch`` rows per call until the disk is full; report; then, told that space
    was freed, append three more batches with the same handle and close."""
    torch.set_num_threads(1)
    blob = TensorBlob.open(path, "a", dtype="float32", shape=ROW, block_size=block_size, sync=sync)
    n = len(blob)
    try:
        while True:
            blob.write(rows(n, batch) if batch > 1 else rows(n, 1)[0])
            n += batch
    except TensorBlobError as exc:
        code = exc.errno if isinstance(exc, OSError) else None
        name = exc.filename if isinstance(exc, OSError) else None
        conn.send(("full", n, type(exc).__name__, code, str(exc), blob.closed, name))
    blob.flush()  # a durable point on the full disk: the journal kept room for it
    conn.send(("flushed",))
    if conn.recv() == "abandon":
        os._exit(0)  # never closed: the next open recovers
    for _ in range(3):
        blob.write(rows(n, batch) if batch > 1 else rows(n, 1)[0])
        n += batch
    blob.close()
    conn.send(("done", n))


def _receive(conn: Any, proc: Any, what: str) -> Any:
    try:
        if conn.poll(120):
            return conn.recv()
    except EOFError:
        pass
    proc.join(5)
    raise AssertionError(f"{what} (exit code {proc.exitcode})")


def _run_filler(path: str, sync: str, batch: int, block_size: int | None, then: str) -> Any:
    ctx = harness._context()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_fill_child, args=(path, sync, batch, block_size, child))
    proc.start()
    child.close()  # so that the writer's death ends a wait at once
    try:
        full = _receive(parent, proc, "the writer died or hung before the disk was full")
        assert _receive(parent, proc, "flush() on the full disk failed") == ("flushed",)
        yield full
        parent.send(then)
        if then == "go":
            yield _receive(parent, proc, "the writer died after space was freed")
    finally:
        proc.join(60)
        if proc.exitcode is None:  # pragma: no cover - a hang is a failure
            proc.kill()
            proc.join()
    assert proc.exitcode == 0, f"the writer died of signal {-proc.exitcode}"  # no SIGBUS


SHAPES = {"1 row": (1, None), "16 rows": (16, None), "whole blocks": (16, 16)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sync", ["normal", "full"])
@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_a_full_disk_is_an_exception_and_appends_resume_once_space_is_freed(
    kind: str, sync: str, shape: str
) -> None:
    batch, block_size = SHAPES[shape]
    with mounts.mounted(kind, SMALL_DISK_KIB[kind]) as where:
        ballast = mounts.fill(where, "ballast", BALLAST)
        path = os.path.join(where, "blob")
        steps = _run_filler(path, sync, batch, block_size, "go")
        _, acked, cls, code, message, closed, name = next(steps)
        assert (cls, code, closed) == ("DiskFullError", errno.ENOSPC, False)
        assert repr(path) in message
        assert "Nothing of this call was committed" in message
        assert "The handle is still usable" in message
        # The file that could not grow: a block file, or the journal.
        assert name is not None
        assert name.startswith(path + os.sep)
        assert repr(name) in message
        assert acked > 0
        assert_rows(path, acked)  # a reader in another process sees every acknowledged row
        os.unlink(ballast)
        done, n = next(steps)
        assert (done, n) == ("done", acked + 3 * batch)
        next(steps, None)
        assert_rows(path, n)
        assert cli(["check", "--deep", path]) == 0


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_an_abandoned_writer_on_a_full_disk_loses_no_acknowledged_row(kind: str) -> None:
    with mounts.mounted(kind, SMALL_DISK_KIB[kind]) as where:
        ballast = mounts.fill(where, "ballast", BALLAST)
        path = os.path.join(where, "blob")
        steps = _run_filler(path, "normal", 16, None, "abandon")
        _, acked, cls, *_ = next(steps)
        assert cls == "DiskFullError"
        next(steps, None)
        assert_rows(path, acked)
        # Recovery needs a little space for its checkpoint: it may refuse, but loses nothing.
        refused = ""
        try:
            TensorBlob.open(path, "a").close()
        except DiskFullError as exc:
            refused = str(exc)
        assert not refused or "Nothing committed was lost" in refused
        assert_rows(path, acked)
        os.unlink(ballast)
        with TensorBlob.open(path, "a") as blob:
            assert len(blob) == acked
            blob.write(rows(acked, 2))
        assert_rows(path, acked + 2)
        assert cli(["check", "--deep", path]) == 0


def _killed_writer(path: str, n: int) -> None:
    blob = TensorBlob.open(path, "w", dtype="float32", shape=ROW)
    blob.write(rows(0, n))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_read_only_filesystem_refuses_writers_clearly_and_serves_readers() -> None:
    with mounts.mounted("ext4", 6144) as where:
        clean, crashed = os.path.join(where, "clean"), os.path.join(where, "crashed")
        with TensorBlob.open(clean, "w", dtype="float32", shape=ROW) as blob:
            blob.write(rows(0, 10))
        db = os.path.join(where, "db")
        TensorDB.open(db, "w", schema={"x": ("float32", ROW)}).close()
        proc = harness._context().Process(target=_killed_writer, args=(crashed, 7))
        proc.start()
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL
        gc.collect()
        mounts.remount(where, "ro")
        before = harness.snapshot_files(where)
        for mode in ("a", "r+", "w", "a+", "w+"):
            with pytest.raises(ReadOnlyFilesystemError) as info:
                TensorBlob.open(clean, mode, timeout=0)
            assert info.value.errno == errno.EROFS
            assert repr(clean) in str(info.value)
            assert "mode 'r'" in str(info.value)
        with pytest.raises(ReadOnlyFilesystemError) as info:
            TensorBlob.open(os.path.join(where, "new"), "w", dtype="float32", shape=ROW)
        assert "creating it (mode 'w') failed" in str(info.value)
        assert "Nothing was created." in str(info.value)
        assert "mode 'r'" not in str(info.value)  # there is nothing to read
        with pytest.raises(ReadOnlyFilesystemError) as info:
            TensorDB.open(db, "a")
        assert f"database {db!r}: opening it for writing" in str(info.value)
        assert "Open the database with mode 'r' to read it." in str(info.value)
        with pytest.raises(ReadOnlyFilesystemError) as info:
            copy_blob(clean, os.path.join(where, "copy"))
        assert "No copy was left." in str(info.value)
        assert_rows(clean, 10)
        assert_rows(crashed, 7)  # the crashed writer's commits, without any recovery
        assert cli(["check", clean]) == 0
        assert cli(["recover", clean]) == 0  # nothing to do: it writes nothing
        assert cli(["check", crashed]) == 1  # needs recovery, which cannot run here
        assert cli(["recover", "--timeout", "0", crashed]) == 1
        assert harness.snapshot_files(where) == before
        mounts.remount(where, "rw")
        with TensorBlob.open(crashed, "a") as blob:
            assert len(blob) == 7
        assert cli(["check", "--deep", crashed]) == 0


def test_a_block_file_deleted_as_it_is_mapped_is_a_library_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blob deleted between the reader's check of a block file and its mapping (a
    real unlink, at that instant): CorruptBlobError naming the file, not torch's."""
    from tensordict import MemoryMappedTensor  # noqa: PLC0415 - what the reader maps with

    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=ROW, block_size=4) as blob:
        blob.write(rows(0, 8))
    real = MemoryMappedTensor.from_filename

    def unlinked_first(filename: str, *args: Any, **kwargs: Any) -> Any:
        os.unlink(filename)
        return real(filename, *args, **kwargs)

    with TensorBlob.open(path, "r") as reader:
        monkeypatch.setattr(MemoryMappedTensor, "from_filename", unlinked_first)
        with pytest.raises(CorruptBlobError, match="is missing") as info:
            reader[5]
        assert "0000000000000001" in str(info.value)


def test_a_block_file_shortened_under_a_reader_is_an_error_naming_the_file(tmp_path: Any) -> None:
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=ROW, block_size=4) as blob:
        blob.write(rows(0, 12))
    reader = TensorBlob.open(path, "r")
    try:
        assert torch.equal(reader[0], rows(0, 1)[0])  # block 0 is mapped now
        victim = os.path.join(path, "blocks", f"{reader._state.blocks[1]:016x}")
        os.truncate(victim, 100)
        with pytest.raises(CorruptBlobError, match=os.path.basename(victim)):
            reader[5]  # block 1: its size is checked before it is mapped
        assert torch.equal(reader[0], rows(0, 1)[0])
    finally:
        reader.close()
    with _check.scan(path) as sc:
        problems = {(p.code, p.file) for p in sc.problems}
    assert ("block-size", f"blocks/{os.path.basename(victim)}") in problems


def _closed_blob(path: str, how: str) -> None:
    new = {"dtype": "float32", "shape": (3,), "block_size": 4}
    if how == "sessions":  # appends in three sessions, each closed with a sync record
        for i in range(3):
            with TensorBlob.open(path, "a", **new) as blob:
                for j in range(5):
                    blob.write(torch.full((3,), float(i * 5 + j)))
    elif how == "full":
        with TensorBlob.open(path, "w", sync="full", **new) as blob:
            for j in range(13):
                blob.write(torch.full((3,), float(j)))
    elif how == "checkpoints":
        old = _durability.CHECKPOINT_BYTES
        _durability.CHECKPOINT_BYTES = 1
        try:
            with TensorBlob.open(path, "w", **new) as blob:
                for j in range(13):
                    blob.write(torch.full((3,), float(j)))
        finally:
            _durability.CHECKPOINT_BYTES = old
    else:  # overwrites (copy-on-write) and a truncate, then a regrowth
        with TensorBlob.open(path, "w", **new) as blob:
            blob.write(torch.arange(45, dtype=torch.float32).reshape(15, 3))
        with TensorBlob.open(path, "r+") as blob:
            blob.seek(3)
            blob.write(torch.zeros(6, 3))
            blob.truncate(10)
            blob.seek(10)
            blob.write(torch.ones(3, 3))


@pytest.mark.parametrize("how", ["sessions", "full", "checkpoints", "overwrites"])
def test_check_deep_finds_every_flipped_byte_in_the_committed_rows_of_a_closed_blob(
    tmp_path: Any, how: str
) -> None:
    origin = str(tmp_path / "origin")
    _closed_blob(origin, how)
    with TensorBlob.open(origin, "r") as blob:
        blocks, length, B, rb = list(blob._state.blocks), len(blob), blob.block_size, 12
    with _check.scan(origin) as sc:
        verifier = _deep.deep_read(sc)
        assert verifier is not None
        assert verifier.summary()["without_checksum"] == 0
        assert not sc.problems
    rng = random.Random(f"flips-{how}")
    for trial in range(25):
        copy = str(tmp_path / f"copy{trial}")
        shutil.copytree(origin, copy)
        slot = rng.randrange(len(blocks))
        committed = min(B, length - slot * B)
        offset = rng.randrange(committed * rb)
        name = f"{blocks[slot]:016x}"
        with open(os.path.join(copy, "blocks", name), "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
        with _check.scan(copy) as sc:
            _deep.deep_read(sc)
            found = [p for p in sc.problems if p.code == "checksum"]
        assert len(found) == 1, (trial, slot, offset, sc.problems)
        assert found[0].file == f"blocks/{name}"
        assert f"rows {slot * B} to" in found[0].message
        shutil.rmtree(copy)


def test_reads_verify_checksums_when_asked(tmp_path: Any) -> None:
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=(3,), block_size=4) as blob:
        blob.write(torch.arange(30, dtype=torch.float32).reshape(10, 3))
    name = os.path.join(path, "blocks", "0000000000000001")
    with open(name, "r+b") as f:
        f.seek(13)
        byte = f.read(1)[0]
        f.seek(13)
        f.write(bytes([byte ^ 1]))
    with TensorBlob.open(path, "r") as blob:  # by default a read returns the bytes as they are
        assert not torch.equal(blob[5], torch.arange(15, 18, dtype=torch.float32))
    with TensorBlob.open(path, "r", verify=True) as blob:
        assert torch.equal(blob[1], torch.arange(3, 6, dtype=torch.float32))  # block 0 is fine
        with pytest.raises(CorruptBlobError, match="0000000000000001"):
            blob[5]
    with pytest.raises(InvalidArgumentError, match="verify"):
        TensorBlob.open(path, "r", verify="yes")


def _as_nobody(path: str, conn: Any) -> None:
    os.setgid(65534)
    os.setuid(65534)
    out = []
    try:
        TensorBlob.open(path, "a", timeout=0)
        out.append("opened")
    except TensorBlobError as exc:
        out.append((type(exc).__name__, getattr(exc, "errno", None), str(exc)))
    with TensorBlob.open(path, "r") as blob:
        out.append(len(blob))
    try:
        TensorBlob.unlink(path, timeout=0)
        out.append("deleted")
    except TensorBlobError as exc:
        out.append(type(exc).__name__)
    conn.send(out)


def test_no_permission_to_write_is_a_clear_error_and_reading_still_works() -> None:
    mounts.need_root()
    base = tempfile.mkdtemp(prefix="tb-perm-")
    try:
        os.chmod(base, 0o755)
        path = os.path.join(base, "blob")
        with TensorBlob.open(path, "w", dtype="float32", shape=(3,)) as blob:
            blob.write(torch.ones(4, 3))
        ctx = harness._context()
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_as_nobody, args=(path, child))
        proc.start()
        assert parent.poll(60)
        (cls, code, message), length, unlinked = parent.recv()
        proc.join(30)
        assert (cls, code, length) == ("BlobPermissionError", errno.EACCES, 4)
        assert unlinked == "BlobPermissionError"  # and the blob is still there
        with TensorBlob.open(path, "r") as blob:
            assert len(blob) == 4
        assert repr(path) in message
        assert issubclass(BlobPermissionError, PermissionError)
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.ENOSPC, DiskFullError),
        (errno.EDQUOT, DiskFullError),
        (errno.EROFS, ReadOnlyFilesystemError),
        (errno.EACCES, BlobPermissionError),
    ],
)
def test_each_system_error_becomes_the_matching_library_error_keeping_its_errno(
    code: int, cls: type
) -> None:
    exc = from_os_error(OSError(code, os.strerror(code), "/b/journal"), "/b", "writing rows")
    assert type(exc) is cls
    assert isinstance(exc, OSError)
    assert isinstance(exc, TensorBlobError)
    assert (exc.errno, exc.filename) == (code, "/b/journal")
    assert "'/b'" in str(exc)
    assert "'/b/journal'" in str(exc)


def test_a_refused_index_names_the_offending_value(tmp_path: Any) -> None:
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=(3,)) as blob:
        blob.write(torch.ones(4, 3))
        with pytest.raises(BlobTypeError, match=r"item 0 is 0\.5 \(float\)"):
            blob[[0.5, 1.5]]
        with pytest.raises(BlobTypeError, match=r"item 1 is 'x' \(str\)"):
            blob[(1, "x")]


_OUT_OF_MAPS = r"""
import errno, mmap, resource, sys
import torch, tensordict
from tensorblob import BlobOSError, TensorBlob

path = sys.argv[1]
row = lambda i: torch.full((1024,), float(i))
with TensorBlob.open(path, "w", dtype="float32", shape=(1024,), block_size=256) as w:
    for b in range(40):  # 40 blocks of 1 MiB; row i holds i
        w.write(torch.arange(b * 256, b * 256 + 256.0)[:, None].expand(256, 1024))
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
# Room for about 12 more block mappings: past them, mmap fails with ENOMEM, as
# it does past vm.max_map_count.
resource.setrlimit(resource.RLIMIT_AS, (vm + (12 << 20), resource.RLIM_INFINITY))
big = TensorBlob.open(path, "r", max_cached_blocks=1000)
for b in range(40):  # more blocks than fit: the handle gives back its own maps and goes on
    assert torch.equal(big[b * 256], row(b * 256)), b
print("one handle: all 40 blocks read")
big.close()
other = TensorBlob.open(path, "r")
with open("/proc/self/status") as f:
    now = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
hog = mmap.mmap(-1, vm + (12 << 20) - now - (1 << 19))  # the room left but half a block
try:
    other[39 * 256 + 5]  # it has no maps to give back
except BlobOSError as exc:
    assert exc.errno == errno.ENOMEM, exc.errno
    assert "blocks/" in exc.filename and "max_cached_blocks" in str(exc), str(exc)
    print("second handle:", type(exc).__name__)
    print(exc, file=sys.stderr)
hog.close()
assert torch.equal(other[39 * 256 + 5], row(39 * 256 + 5))  # usable once maps are free
assert torch.equal(other[5], row(5))
print("second handle usable")
"""


def test_running_out_of_memory_maps_is_a_library_error_and_the_handle_recovers(
    tmp_path: Any,
) -> None:
    """mmap failing with ENOMEM (the process's map count or address space at its limit,
    here RLIMIT_AS in a child): a handle first gives back its own cached maps and retries;
    if that is not enough, BlobOSError(ENOMEM) naming the block file and the remedy,
    never torch's RuntimeError, and the handle reads again once maps are free."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    path = str(tmp_path / "blob")
    done = subprocess.run(
        [sys.executable, "-c", _OUT_OF_MAPS, path],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == [
        "one handle: all 40 blocks read",
        "second handle: BlobOSError",
        "second handle usable",
    ]


def test_a_durable_point_without_a_thread_to_be_had_checksums_in_the_callers_thread(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SUM_THREAD_BYTES a close checksums on a thread while it fsyncs. When no thread
    can start (out of memory or of threads: RuntimeError from start()), it does the work in
    the caller's thread: the close succeeds, and the checksums are right."""
    import threading  # noqa: PLC0415

    from tensorblob import _recovery  # noqa: PLC0415

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    path = str(tmp_path / "blob")
    n = _recovery.SUM_THREAD_BYTES // ROW_BYTES + 1
    blob = TensorBlob.open(path, "w", dtype="float32", shape=ROW)
    blob.write(rows(0, n))
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    blob.close()
    monkeypatch.undo()
    assert_rows(path, n)
    assert cli(["check", "--deep", path]) == 0
