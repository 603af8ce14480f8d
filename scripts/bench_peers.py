#!/usr/bin/env python
"""tensorblob beside the stores users already know: ``python scripts/bench.py --peers``.

Runs the same eight workloads on tensorblob, the original tensorblob 0.3.0 from
PyPI, a raw ``np.memmap`` baseline, h5py, zarr (v3), LMDB and SQLite. Each peer
gives the durability the workload asks for, as far as it can, and every cell
records the durability it actually gave; cells where a peer cannot give what the
workload asks for are flagged (``✗``), not silently measured weaker.

Every measurement runs in a fresh subprocess. Peers alternate within each
repetition, in an order that changes every repetition and workload so that no
peer keeps the same slot or the same predecessor (``run_order``), and the
reported value is the median over repetitions. The stores read by the read workloads are built once,
before timing, and every reader reads its whole store once through its own API
before it is timed (warm page cache, warm mappings).

This file is also the worker: ``bench_peers.py --worker TASK_JSON`` runs one
measurement and prints its result as one JSON line. The worker imports nothing
of tensorblob at module level, so that the original 0.3.0 (same import name) can
be put first on ``sys.path`` through ``PYTHONPATH``.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

DIM = 768  # rows of 768 float32
ROW_BYTES = DIM * 4
SLICE = 8192  # rows per bulk-load batch and per scan slice
GATHER = 512  # rows per random gather
SESSION_ROWS = 16  # rows appended per collector session
CHUNK_ROWS = 64  # h5py and zarr chunks: 64 rows (192 KiB), uncompressed
ROW_CALLS = 1000  # single-row reads timed together
ORIG_VERSION = "0.3.0"
ORIG_REQS = (f"tensorblob=={ORIG_VERSION}", "just-config-mixin>=0.1.1rc2", "orjson>=3.11.1,<4")
LMDB_MAP = 1 << 36  # address space reserved by LMDB; the file grows as pages are used
SQLITE_MMAP = 1 << 40  # capped by SQLite's SQLITE_MAX_MMAP_SIZE (2 GiB in stock builds)
WORKER_TIMEOUT = 900  # seconds per measurement subprocess

now = time.perf_counter


# -- workloads -----------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str
    name: str
    unit: str
    better: str  # "higher" or "lower"
    asks: str  # the durability the workload asks for


WORKLOADS = (
    Workload(
        "power",
        "1. single-row commits, power-loss safe",
        "rows/s",
        "higher",
        "each commit survives power loss when it returns",
    ),
    Workload(
        "process",
        "2. single-row commits, process-death safe",
        "rows/s",
        "higher",
        "each commit survives the death of the process when it returns",
    ),
    Workload("open", "3. open + len, read-only", "ms", "lower", "read-only"),
    Workload(
        "session",
        "4. collector session: open, append 16 rows, durable close",
        "sessions/s",
        "higher",
        "the session's rows survive power loss when close returns; "
        "a crash never harms rows of earlier sessions",
    ),
    Workload(
        "bulk",
        "5. bulk load, 8192-row batches, durable close",
        "GB/s",
        "higher",
        "every row survives power loss when close returns",
    ),
    Workload("row", "6. random single row store[i] -> tensor", "us", "lower", "read-only"),
    Workload("gather", "7. random 512-row gather -> tensor", "ms", "lower", "read-only"),
    Workload("scan", "8. sequential scan, 8192-row slices", "GB/s", "higher", "read-only"),
)
WORKLOAD_KEYS = tuple(w.key for w in WORKLOADS)
READ_ONLY = ("open", "row", "gather", "scan")


# -- small helpers (worker and orchestrator) -------------------------------------


def warm_files(path: str) -> None:
    """Read every file under ``path`` (or the file itself) once, into the page cache."""
    files = [path] if os.path.isfile(path) else []
    for root, _dirs, names in os.walk(path):
        files.extend(os.path.join(root, n) for n in names)
    for name in files:
        with open(name, "rb", buffering=0) as f:
            while f.read(1 << 23):
                pass


def fdatasync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fdatasync every file under ``path`` and fsync every directory, then its parent."""
    if os.path.isfile(path):
        fdatasync_path(path)
    else:
        for root, dirs, names in os.walk(path, topdown=False):
            for n in names:
                fdatasync_path(os.path.join(root, n))
            for d in dirs:
                fsync_dir(os.path.join(root, d))
        fsync_dir(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def lib(name: str) -> Any:
    """Import a peer's library (or tensorblob) when a worker first needs it."""
    return importlib.import_module(name)


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


# -- peers ------------------------------------------------------------------------
#
# Each peer: a layout (``ext``), the durability it gives per write workload
# (``dur``: ok, short tag, full text) and the operations the worker times. The
# operations import their library lazily, so that the orchestrator can read the
# class attributes without importing torch or the peers.

Dur = tuple[bool, str, str]


class Reader:
    def __init__(
        self,
        row: Callable[[int], Any],
        gather: Callable[[Any], Any],
        slice_: Callable[[int, int], Any],
        close: Callable[[], None],
    ) -> None:
        self.row, self.gather, self.slice, self.close = row, gather, slice_, close


class Peer:
    key = ""
    label = ""
    ext = ""
    modules: tuple[str, ...] = ()
    layout = ""
    dur: ClassVar[dict[str, Dur]] = {}

    def create(self, path: str) -> None:
        raise NotImplementedError

    def appender(
        self, path: str, level: str, capacity: int
    ) -> tuple[Callable[[Any], None], Callable[[], None]]:
        raise NotImplementedError

    def open_len(self, path: str) -> tuple[int, Callable[[], None]]:
        raise NotImplementedError

    def session(self, path: str, batch: Any) -> None:
        raise NotImplementedError

    def bulk_open(self, path: str, rows: int) -> Any:
        raise NotImplementedError

    def bulk_write(self, h: Any, batch: Any) -> None:
        raise NotImplementedError

    def bulk_close(self, h: Any) -> None:
        raise NotImplementedError

    def reader(self, path: str) -> Reader:
        raise NotImplementedError


class NewTB(Peer):
    key = "tensorblob"
    label = "tensorblob"
    ext = ".blob"
    layout = "this tree; default block_size (8192 rows)"
    dur: ClassVar[dict[str, Dur]] = {
        "power": (True, "fsync/commit", 'sync="full": each commit is fsynced before it returns'),
        "process": (
            True,
            "atomic, no fsync",
            'sync="normal": atomic commit through the journal, no fsync',
        ),
        "session": (True, "fsync at close", 'sync="normal"; close() is a durable point'),
        "bulk": (True, "fsync at close", 'sync="normal"; close() is a durable point'),
    }

    def _tb(self) -> Any:
        return lib("tensorblob").TensorBlob

    def create(self, path: str) -> None:
        # The first row copied through a mapping imports tensordict (about 1 s
        # here; issue 20 moved it out of `import tensorblob`). Like every peer's
        # own import, it is paid before the clock starts (create() runs before
        # it); the startup figures (l1-l4 of scripts/bench.py) measure imports.
        importlib.import_module("tensordict")
        self._tb().open(path, "w", dtype=torch.float32, shape=(DIM,)).close()

    def appender(self, path, level, capacity):
        blob = self._tb().open(path, "a", sync="full" if level == "power" else "normal")
        return blob.write, blob.close

    def open_len(self, path):
        blob = self._tb().open(path, "r")
        return len(blob), blob.close

    def session(self, path, batch):
        blob = self._tb().open(path, "a")
        blob.write(batch)
        blob.close()

    def bulk_open(self, path, rows):
        return self._tb().open(path, "w", dtype=torch.float32, shape=(DIM,))

    def bulk_write(self, h, batch):
        h.write(batch)

    def bulk_close(self, h):
        h.close()

    def reader(self, path):
        blob = self._tb().open(path, "r")
        return Reader(lambda i: blob[i], lambda idx: blob[idx], lambda i, j: blob[i:j], blob.close)


class OrigTB(NewTB):
    """tensorblob 0.3.0 from PyPI: no fsync anywhere; ``.stat`` rewritten in place."""

    key = "tensorblob-0.3.0"
    label = "tensorblob 0.3.0"
    layout = "PyPI 0.3.0; default block_size (8192 rows); fsyncs added by the bench"
    dur: ClassVar[dict[str, Dur]] = {
        "power": (
            False,
            "fsync added; .stat in place",
            "write + flush() per row, then the bench fdatasyncs the block and .stat "
            "(0.3.0 has no fsync); .stat is rewritten in place (truncate + write), so a "
            "crash during a commit can leave a blob that does not open",
        ),
        "process": (
            False,
            "flush/row; .stat in place",
            "write + flush() per row (rewrites .stat); .stat is rewritten in place, so "
            "a crash during a commit can leave a blob that does not open",
        ),
        "session": (
            False,
            "fsync added; .stat in place",
            "open 'a', write, close(), then the bench fdatasyncs the blocks written, .stat "
            "and the directory; a crash mid-session can leave an empty .stat",
        ),
        "bulk": (
            True,
            "fsync added at close",
            "close(), then the bench fdatasyncs every block and .stat and fsyncs the "
            "directory (0.3.0 has no fsync)",
        ),
    }

    def create(self, path: str) -> None:
        self._tb().open(path, "w", dtype="float32", shape=(DIM,)).close()

    def appender(self, path, level, capacity):
        blob = self._tb().open(path, "a")
        if level == "process":

            def commit(row: Any) -> None:
                blob.write(row)
                blob.flush()

            return commit, blob.close

        fds: dict[str, int] = {}
        stat = os.path.join(blob.filename, blob.status_name)

        def commit_full(row: Any) -> None:
            blob.write(row)
            blob.flush()
            name = blob._status.bds[-1]
            fd = fds.get(name)
            if fd is None:
                fd = fds[name] = os.open(os.path.join(blob.filename, name), os.O_RDONLY)
                fsync_dir(blob.filename)
            os.fdatasync(fd)
            fdatasync_path(stat)

        def close() -> None:
            blob.close()
            for fd in fds.values():
                os.close(fd)

        return commit_full, close

    def session(self, path, batch):
        blob = self._tb().open(path, "a")
        n, blocks = len(blob), len(blob._status.bds)
        blob.write(batch)
        blob.close()
        bs = blob.block_size
        for name in blob._status.bds[n // bs : (n + batch.shape[0] - 1) // bs + 1]:
            fdatasync_path(os.path.join(blob.filename, name))
        fdatasync_path(os.path.join(blob.filename, blob.status_name))
        if len(blob._status.bds) != blocks:
            fsync_dir(blob.filename)

    def bulk_open(self, path, rows):
        return self._tb().open(path, "w", dtype="float32", shape=(DIM,))

    def bulk_close(self, h):
        h.close()
        fsync_tree(h.filename)


class Memmap(Peer):
    key = "np.memmap"
    label = "np.memmap"
    ext = ".f32"
    layout = "one raw file, rows back to back; file size / 3072 = rows"
    dur: ClassVar[dict[str, Dur]] = {
        "power": (
            False,
            "msync/row; no length record",
            "mm[i] = row; mm.flush() (msync) per row into a preallocated file; nothing "
            "records how many rows are committed (a baseline, not a store)",
        ),
        "process": (
            False,
            "no length record",
            "mm[i] = row into a preallocated file (in the page cache at once); nothing "
            "records how many rows are committed (a baseline, not a store)",
        ),
        "session": (
            False,
            "msync; size as length",
            "grow the file, map the 16 rows, write, flush() (msync); the file size is "
            "the length, so a crash after the grow exposes zero rows",
        ),
        "bulk": (True, "msync at close", "np.memmap 'w+' of the final size, writes, flush()"),
    }

    def create(self, path: str) -> None:
        open(path, "wb").close()

    def appender(self, path, level, capacity):
        os.truncate(path, capacity * ROW_BYTES)
        mm = np.memmap(path, dtype=np.float32, mode="r+", shape=(capacity, DIM))
        mv = mm.view(np.ndarray)
        pos = [0]

        def commit(row: Any) -> None:
            mv[pos[0]] = row.numpy()
            if level == "power":
                mm.flush()
            pos[0] += 1

        def close() -> None:
            mm.flush()
            os.truncate(path, pos[0] * ROW_BYTES)

        return commit, close

    def open_len(self, path):
        n = os.path.getsize(path) // ROW_BYTES
        mm = np.memmap(path, dtype=np.float32, mode="r", shape=(n, DIM))
        return len(mm), lambda: None

    def session(self, path, batch):
        b = batch.numpy()
        end = os.path.getsize(path)
        os.truncate(path, end + b.nbytes)
        mm = np.memmap(path, dtype=np.float32, mode="r+", offset=end, shape=b.shape)
        mm[:] = b
        mm.flush()
        del mm

    def bulk_open(self, path, rows):
        mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, DIM))
        return [mm, mm.view(np.ndarray), 0]

    def bulk_write(self, h, batch):
        b = batch.numpy()
        h[1][h[2] : h[2] + b.shape[0]] = b
        h[2] += b.shape[0]

    def bulk_close(self, h):
        h[0].flush()
        h.clear()

    def reader(self, path):
        n = os.path.getsize(path) // ROW_BYTES
        mm = np.memmap(path, dtype=np.float32, mode="r", shape=(n, DIM))
        mv = mm.view(np.ndarray)
        return Reader(
            lambda i: torch.from_numpy(mv[i].copy()),
            lambda idx: torch.from_numpy(mv[idx.numpy()]),
            lambda i, j: torch.from_numpy(mv[i:j].copy()),
            lambda: None,
        )


class H5py(Peer):
    key = "h5py"
    label = "h5py"
    ext = ".h5"
    modules = ("h5py",)
    layout = (
        f"dataset (n, {DIM}) f4, maxshape (None, {DIM}), chunks ({CHUNK_ROWS}, {DIM}), "
        "no filters, default libver"
    )
    dur: ClassVar[dict[str, Dur]] = {
        "power": (
            False,
            "flush+fsync/row; not atomic",
            "resize, write, File.flush() and fdatasync per row; HDF5 updates its "
            "metadata in place with no journal, so a crash during a commit can "
            "corrupt the file, earlier rows included",
        ),
        "process": (
            False,
            "flush/row; not atomic",
            "resize, write, File.flush() per row (no fsync); metadata updated in place, "
            "so a crash during a flush can corrupt the file",
        ),
        "session": (
            False,
            "fsync added; not atomic",
            "open 'a', resize, write, close, then fdatasync; a crash mid-session can "
            "corrupt the file, earlier sessions' rows included",
        ),
        "bulk": (True, "fsync added at close", "resize + write per batch, close, fdatasync"),
    }

    def create(self, path: str) -> None:
        h5py = lib("h5py")
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "x", shape=(0, DIM), maxshape=(None, DIM), chunks=(CHUNK_ROWS, DIM), dtype="f4"
            )

    def appender(self, path, level, capacity):
        h5py = lib("h5py")
        f = h5py.File(path, "a")
        ds = f["x"]
        fd = f.id.get_vfd_handle()
        n = [ds.shape[0]]

        def commit(row: Any) -> None:
            k = n[0]
            ds.resize(k + 1, axis=0)
            ds[k] = row.numpy()
            f.flush()
            if level == "power":
                os.fdatasync(fd)
            n[0] = k + 1

        return commit, f.close

    def open_len(self, path):
        h5py = lib("h5py")
        f = h5py.File(path, "r")
        return f["x"].shape[0], f.close

    def session(self, path, batch):
        h5py = lib("h5py")
        with h5py.File(path, "a") as f:
            ds = f["x"]
            k = ds.shape[0]
            ds.resize(k + batch.shape[0], axis=0)
            ds[k:] = batch.numpy()
        fdatasync_path(path)

    def bulk_open(self, path, rows):
        self.create(path)
        h5py = lib("h5py")
        f = h5py.File(path, "a")
        return [f, f["x"], 0, path]

    def bulk_write(self, h, batch):
        k, m = h[2], batch.shape[0]
        h[1].resize(k + m, axis=0)
        h[1][k : k + m] = batch.numpy()
        h[2] = k + m

    def bulk_close(self, h):
        h[0].close()
        fsync_tree(h[3])

    def reader(self, path):
        h5py = lib("h5py")
        f = h5py.File(path, "r")
        ds = f["x"]

        def gather(idx: Any) -> Any:
            u, inv = np.unique(idx.numpy(), return_inverse=True)  # h5py wants sorted, unique
            return torch.from_numpy(ds[u][inv])

        return Reader(
            lambda i: torch.from_numpy(ds[i]),
            gather,
            lambda i, j: torch.from_numpy(ds[i:j]),
            f.close,
        )


class Zarr(Peer):
    key = "zarr"
    label = "zarr"
    ext = ".zarr"
    modules = ("zarr",)
    layout = (
        f"zarr v3 array (n, {DIM}) float32, chunks ({CHUNK_ROWS}, {DIM}), no compressor, LocalStore"
    )
    dur: ClassVar[dict[str, Dur]] = {
        "power": (
            False,
            "fsync added/row; not atomic",
            "resize + write per row, then the bench fdatasyncs the chunk and zarr.json and "
            "fsyncs their directories (zarr has no fsync); zarr replaces each file "
            "atomically, but resize and chunk write are two steps, so a crash between "
            "them exposes a row of zeros",
        ),
        "process": (
            False,
            "resize+write; not atomic",
            "resize + write per row (each file replaced atomically, no fsync); a crash "
            "between the two steps exposes a row of zeros",
        ),
        "session": (
            False,
            "fsync added; not atomic",
            "resize + write, then the bench fsyncs the chunks, zarr.json and directories; "
            "a crash between resize and write exposes rows of zeros",
        ),
        "bulk": (
            True,
            "fsync added at close",
            "resize + write per batch, then the bench fsyncs every file and directory",
        ),
    }

    def create(self, path: str) -> None:
        zarr = lib("zarr")
        zarr.create_array(
            store=path,
            shape=(0, DIM),
            chunks=(CHUNK_ROWS, DIM),
            dtype="float32",
            compressors=None,
            fill_value=0.0,
            zarr_format=3,
        )

    def _sync_rows(self, path: str, first: int, last: int) -> None:
        """fsync what rows first..last (inclusive) of a resize + write changed."""
        cdir = os.path.join(path, "c")
        for c in range(first // CHUNK_ROWS, last // CHUNK_ROWS + 1):
            fdatasync_path(os.path.join(cdir, str(c), "0"))
            fsync_dir(os.path.join(cdir, str(c)))
        if first % CHUNK_ROWS == 0 or first // CHUNK_ROWS != last // CHUNK_ROWS:
            fsync_dir(cdir)
        fdatasync_path(os.path.join(path, "zarr.json"))
        fsync_dir(path)

    def appender(self, path, level, capacity):
        zarr = lib("zarr")
        arr = zarr.open_array(path, mode="r+")
        n = [arr.shape[0]]

        def commit(row: Any) -> None:
            k = n[0]
            arr.resize((k + 1, DIM))
            arr[k] = row.numpy()
            if level == "power":
                self._sync_rows(path, k, k)
            n[0] = k + 1

        return commit, lambda: None

    def open_len(self, path):
        zarr = lib("zarr")
        return zarr.open_array(path, mode="r").shape[0], lambda: None

    def session(self, path, batch):
        zarr = lib("zarr")
        arr = zarr.open_array(path, mode="r+")
        k, m = arr.shape[0], batch.shape[0]
        arr.resize((k + m, DIM))
        arr[k : k + m] = batch.numpy()
        self._sync_rows(path, k, k + m - 1)

    def bulk_open(self, path, rows):
        self.create(path)
        zarr = lib("zarr")
        return [zarr.open_array(path, mode="r+"), 0, path]

    def bulk_write(self, h, batch):
        k, m = h[1], batch.shape[0]
        h[0].resize((k + m, DIM))
        h[0][k : k + m] = batch.numpy()
        h[1] = k + m

    def bulk_close(self, h):
        fsync_tree(h[2])

    def reader(self, path):
        zarr = lib("zarr")
        arr = zarr.open_array(path, mode="r")
        return Reader(
            lambda i: torch.from_numpy(arr[i]),
            lambda idx: torch.from_numpy(arr.oindex[idx.numpy()]),
            lambda i, j: torch.from_numpy(arr[i:j]),
            lambda: None,
        )


KEY = struct.Struct(">Q")  # LMDB key: big-endian row number, so keys sort as rows


class Lmdb(Peer):
    key = "lmdb"
    label = "LMDB"
    ext = ".lmdb"
    modules = ("lmdb",)
    layout = "one unnamed DB; key = big-endian u64 row number, value = the row's 3072 bytes"
    dur: ClassVar[dict[str, Dur]] = {
        "power": (True, "fsync/commit", "one write txn per row, sync=True (default)"),
        "process": (
            True,
            "atomic, no fsync",
            "one write txn per row, sync=False, metasync=False: atomic (meta page "
            "switch), no fsync",
        ),
        "session": (True, "fsync at commit", "open env, one txn of 16 puts, sync=True, close"),
        "bulk": (
            True,
            "env.sync at close",
            "one txn per batch (putmulti, append) with sync=False, then env.sync(True)",
        ),
    }

    def _open(self, path: str, **kw: Any) -> Any:
        lmdb = lib("lmdb")
        return lmdb.open(path, map_size=LMDB_MAP, **kw)

    def create(self, path: str) -> None:
        self._open(path).close()

    def appender(self, path, level, capacity):
        full = level == "power"
        env = self._open(path, sync=full, metasync=full)
        n = [env.stat()["entries"]]

        def commit(row: Any) -> None:
            with env.begin(write=True) as txn:
                txn.put(KEY.pack(n[0]), row.numpy(), append=True)
            n[0] += 1

        return commit, env.close

    def open_len(self, path):
        lmdb = lib("lmdb")
        env = lmdb.open(path, readonly=True)
        return env.stat()["entries"], env.close

    def session(self, path, batch):
        env = self._open(path)
        b = batch.numpy()
        k = env.stat()["entries"]
        with env.begin(write=True) as txn:
            for j in range(b.shape[0]):
                txn.put(KEY.pack(k + j), b[j], append=True)
        env.close()

    def bulk_open(self, path, rows):
        return [self._open(path, sync=False, metasync=False), 0]

    def bulk_write(self, h, batch):
        b = batch.numpy()
        k = h[1]
        with h[0].begin(write=True) as txn:
            txn.cursor().putmulti(((KEY.pack(k + j), b[j]) for j in range(b.shape[0])), append=True)
        h[1] = k + b.shape[0]

    def bulk_close(self, h):
        h[0].sync(True)
        h[0].close()

    def reader(self, path):
        lmdb = lib("lmdb")
        env = lmdb.open(path, readonly=True)
        txn = env.begin(buffers=True)  # values are views into the map, valid in the txn
        get = txn.get

        def row(i: int) -> Any:
            return torch.from_numpy(np.frombuffer(get(KEY.pack(i)), np.float32).copy())

        def gather(idx: Any) -> Any:
            ids = idx.tolist()
            out = bytearray(len(ids) * ROW_BYTES)
            mv = memoryview(out)
            for j, i in enumerate(ids):
                mv[j * ROW_BYTES : (j + 1) * ROW_BYTES] = get(KEY.pack(i))
            return torch.frombuffer(out, dtype=torch.float32).view(len(ids), DIM)

        def slice_(i: int, j: int) -> Any:
            out = bytearray((j - i) * ROW_BYTES)
            mv = memoryview(out)
            cur = txn.cursor()
            cur.set_key(KEY.pack(i))
            o, end = 0, len(out)
            for v in cur.iternext(keys=False, values=True):
                mv[o : o + ROW_BYTES] = v
                o += ROW_BYTES
                if o == end:
                    break
            return torch.frombuffer(out, dtype=torch.float32).view(j - i, DIM)

        def close() -> None:
            txn.abort()
            env.close()

        return Reader(row, gather, slice_, close)


class Sqlite(Peer):
    key = "sqlite"
    label = "SQLite"
    ext = ".db"
    layout = (
        "WAL; t(id INTEGER PRIMARY KEY, row BLOB); readers set mmap_size; "
        "len = max(id) + 1 (ids are dense from 0)"
    )
    dur: ClassVar[dict[str, Dur]] = {
        "power": (
            True,
            "WAL FULL: fsync/commit",
            "autocommit INSERT per row, WAL, synchronous=FULL",
        ),
        "process": (
            True,
            "WAL NORMAL: no fsync",
            "autocommit INSERT per row, WAL, synchronous=NORMAL: atomic, no fsync",
        ),
        "session": (
            True,
            "WAL FULL commit",
            "connect, one transaction of 16 INSERTs, synchronous=FULL, close",
        ),
        "bulk": (
            True,
            "checkpoint+fsync at close",
            "one transaction per batch (executemany), WAL, synchronous=NORMAL, then "
            "wal_checkpoint(TRUNCATE), which fsyncs the database, and close",
        ),
    }
    INSERT = "INSERT INTO t(id, row) VALUES (?, ?)"

    def _connect(self, path: str, sync: str) -> Any:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute(f"PRAGMA synchronous={sync}")
        return con

    @staticmethod
    def _next_id(con: Any) -> int:
        top = con.execute("SELECT max(id) FROM t").fetchone()[0]
        return 0 if top is None else top + 1

    def create(self, path: str) -> None:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, row BLOB NOT NULL)")
        con.close()

    def appender(self, path, level, capacity):
        con = self._connect(path, "FULL" if level == "power" else "NORMAL")
        n = [self._next_id(con)]
        execute, sql = con.execute, self.INSERT

        def commit(row: Any) -> None:
            execute(sql, (n[0], row.numpy()))
            n[0] += 1

        return commit, con.close

    def _reader_con(self, path: str) -> Any:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.execute(f"PRAGMA mmap_size={SQLITE_MMAP}")
        return con

    def open_len(self, path):
        con = self._reader_con(path)
        return self._next_id(con), con.close

    def session(self, path, batch):
        con = self._connect(path, "FULL")
        b = batch.numpy()
        k = self._next_id(con)
        con.execute("BEGIN")
        con.executemany(self.INSERT, ((k + j, b[j]) for j in range(b.shape[0])))
        con.execute("COMMIT")
        con.close()

    def bulk_open(self, path, rows):
        self.create(path)
        return [self._connect(path, "NORMAL"), 0]

    def bulk_write(self, h, batch):
        con, k = h
        b = batch.numpy()
        con.execute("BEGIN")
        con.executemany(self.INSERT, ((k + j, b[j]) for j in range(b.shape[0])))
        con.execute("COMMIT")
        h[1] = k + b.shape[0]

    def bulk_close(self, h):
        h[0].execute("PRAGMA wal_checkpoint(TRUNCATE)")
        h[0].close()

    def reader(self, path):
        con = self._reader_con(path)
        cur = con.cursor()
        one = "SELECT row FROM t WHERE id = ?"
        rng = "SELECT row FROM t WHERE id >= ? AND id < ? ORDER BY id"
        many: dict[int, str] = {}

        def row(i: int) -> Any:
            b = cur.execute(one, (i,)).fetchone()[0]
            return torch.from_numpy(np.frombuffer(b, np.float32).copy())

        def gather(idx: Any) -> Any:
            ids = idx.tolist()
            sql = many.get(len(ids))
            if sql is None:
                marks = ",".join("?" * len(ids))
                sql = many[len(ids)] = f"SELECT id, row FROM t WHERE id IN ({marks})"
            got = dict(cur.execute(sql, ids).fetchall())
            out = bytearray(len(ids) * ROW_BYTES)
            mv = memoryview(out)
            for j, i in enumerate(ids):
                mv[j * ROW_BYTES : (j + 1) * ROW_BYTES] = got[i]
            return torch.frombuffer(out, dtype=torch.float32).view(len(ids), DIM)

        def slice_(i: int, j: int) -> Any:
            out = bytearray().join(r for (r,) in cur.execute(rng, (i, j)))
            return torch.frombuffer(out, dtype=torch.float32).view(j - i, DIM)

        return Reader(row, gather, slice_, con.close)


PEER_CLASSES: tuple[type[Peer], ...] = (NewTB, OrigTB, Memmap, H5py, Zarr, Lmdb, Sqlite)
PEERS = {c.key: c for c in PEER_CLASSES}
PEER_KEYS = tuple(PEERS)


# -- the worker ---------------------------------------------------------------------


def load_src(path: str, n: int) -> Any:
    return torch.from_numpy(np.fromfile(path, dtype=np.float32, count=n * DIM).reshape(n, DIM))


def src_rows(path: str, ids: Any) -> Any:
    total = os.path.getsize(path) // ROW_BYTES
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(total, DIM))
    return torch.from_numpy(np.array(mm[np.asarray(ids)]))


def check_store(peer: Peer, path: str, expect: Any) -> None:
    """Untimed: the store holds len(expect) rows, the last few equal to expect's."""
    n, close = peer.open_len(path)
    close()
    if n != expect.shape[0]:
        raise AssertionError(f"{peer.key}: {n} rows after the run, expected {expect.shape[0]}")
    r = peer.reader(path)
    try:
        lo = max(0, n - 3)
        got = r.slice(lo, n)
        if not torch.equal(got, expect[lo:n]):
            raise AssertionError(f"{peer.key}: rows {lo}..{n} differ from what was written")
    finally:
        r.close()


def w_build(peer: Peer, t: dict) -> dict:
    src = load_src(t["src"], t["rows"])
    h = peer.bulk_open(t["path"], t["rows"])
    for i in range(0, t["rows"], SLICE):
        peer.bulk_write(h, src[i : i + SLICE])
    peer.bulk_close(h)
    check_store(peer, t["path"], src)
    return {"value": None}


def w_commits(peer: Peer, t: dict) -> dict:
    level, p = t["workload"], t["params"]
    n = p["commits_power"] if level == "power" else p["commits_process"]
    rows = list(load_src(t["src"], n).unbind(0))
    path = os.path.join(t["dir"], "store" + peer.ext)
    peer.create(path)
    commit, close = peer.appender(path, level, n)
    gc.collect()
    done = 0
    t0 = now()
    deadline = t0 + p["cap_s"]
    for row in rows:
        commit(row)
        done += 1
        if now() > deadline:
            break
    elapsed = now() - t0
    close()
    check_store(peer, path, load_src(t["src"], done))
    remove(path)
    return {"value": done / elapsed, "n": done, "s": elapsed}


def w_session(peer: Peer, t: dict) -> dict:
    p = t["params"]
    batch = load_src(t["src"], SESSION_ROWS)
    path = os.path.join(t["dir"], "store" + peer.ext)
    peer.create(path)
    gc.collect()
    k = 0
    t0 = now()
    deadline = t0 + p["cap_s"]
    while k < p["sessions"] and (k == 0 or now() < deadline):
        peer.session(path, batch)
        k += 1
    elapsed = now() - t0
    check_store(peer, path, batch.repeat(k, 1) if k else torch.empty(0, DIM))
    remove(path)
    return {"value": k / elapsed, "n": k, "s": elapsed}


def w_bulk(peer: Peer, t: dict) -> dict:
    rows = t["rows"]
    src = load_src(t["src"], rows)
    path = os.path.join(t["dir"], "store" + peer.ext)
    h = peer.bulk_open(path, rows)  # creating the empty store is not timed
    gc.collect()
    t0 = now()
    for i in range(0, rows, SLICE):
        peer.bulk_write(h, src[i : i + SLICE])
    peer.bulk_close(h)
    elapsed = now() - t0
    check_store(peer, path, src)
    remove(path)
    return {"value": rows * ROW_BYTES / elapsed / 1e9, "s": elapsed}


def w_open(peer: Peer, t: dict) -> dict:
    p, path = t["params"], t["path"]
    warm_files(path)
    n, close = peer.open_len(path)  # first open in the process: not timed
    close()
    if n != t["rows"]:
        raise AssertionError(f"{peer.key}: len {n}, expected {t['rows']}")
    lat = []
    gc.collect()  # once: a collection before every open would leave the caches cold (+0.3 ms)
    deadline = now() + p["cap_s"]
    while len(lat) < p["opens"] and (len(lat) < 5 or now() < deadline):
        t0 = now()
        n, close = peer.open_len(path)
        lat.append(now() - t0)
        close()
    return {"value": statistics.median(lat) * 1e3, "n": len(lat)}


def w_read(peer: Peer, t: dict) -> dict:
    p, path, rows, what = t["params"], t["path"], t["rows"], t["workload"]
    warm_files(path)
    r = peer.reader(path)
    try:
        for i in range(0, rows, SLICE):  # every row read once through the peer's own API
            r.slice(i, min(i + SLICE, rows))
        # untimed check: the peer returns tensors of the right shape and values
        ids = [0, rows // 2, rows - 1]
        want = src_rows(t["src"], ids)
        got_row = r.row(ids[1])
        got_gather = r.gather(torch.tensor([ids[2], ids[0], ids[2]]))
        if not (
            isinstance(got_row, torch.Tensor)
            and torch.equal(got_row, want[1])
            and torch.equal(got_gather, want[[2, 0, 2]])
        ):
            raise AssertionError(f"{peer.key}: reads return wrong rows")
        gc.collect()
        seed = 1000 + t["rep"]
        if what == "row":
            rng = random.Random(seed)
            idx = [rng.randrange(rows) for _ in range(p["row_reads"])]
            read = r.row
            per_call = []
            deadline = now() + p["cap_s"]
            for b in range(0, len(idx), ROW_CALLS):
                chunk = idx[b : b + ROW_CALLS]
                t0 = now()
                for i in chunk:
                    read(i)
                per_call.append((now() - t0) / len(chunk) * 1e6)
                if len(per_call) >= 3 and now() > deadline:
                    break
            return {"value": statistics.median(per_call), "n": len(per_call) * ROW_CALLS}
        if what == "gather":
            gen = torch.Generator().manual_seed(seed)
            lat = []
            deadline = now() + p["cap_s"]
            for _ in range(p["gathers"]):
                g = torch.randint(rows, (GATHER,), generator=gen)
                t0 = now()
                r.gather(g)
                lat.append(now() - t0)
                if len(lat) >= 5 and now() > deadline:
                    break
            return {"value": statistics.median(lat) * 1e3, "n": len(lat)}
        t0 = now()
        for i in range(0, rows, SLICE):
            r.slice(i, min(i + SLICE, rows))
        elapsed = now() - t0
        return {"value": rows * ROW_BYTES / elapsed / 1e9, "s": elapsed}
    finally:
        r.close()


RUNNERS: dict[str, Callable[[Peer, dict], dict]] = {
    "build": w_build,
    "power": w_commits,
    "process": w_commits,
    "session": w_session,
    "bulk": w_bulk,
    "open": w_open,
    "row": w_read,
    "gather": w_read,
    "scan": w_read,
}


def worker(task: dict) -> dict:
    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    peer = PEERS[task["peer"]]()
    where = None
    if isinstance(peer, NewTB):
        tensorblob = lib("tensorblob")
        where = tensorblob.__file__
        expect = task["tensorblob_from"]
        if not os.path.abspath(where).startswith(os.path.abspath(expect) + os.sep):
            raise RuntimeError(f"{peer.key}: imported tensorblob from {where}, not {expect}")
        if isinstance(peer, OrigTB) and tensorblob.__version__ != ORIG_VERSION:
            raise RuntimeError(f"imported tensorblob {tensorblob.__version__}, not {ORIG_VERSION}")
    out = RUNNERS[task["workload"]](peer, task)
    out["imported"] = where
    return out


# -- the orchestrator ---------------------------------------------------------------


@dataclass
class PeerParams:
    rows: int = 200_000
    reps: int = 3
    commits_power: int = 2000
    commits_process: int = 20_000
    sessions: int = 200
    opens: int = 100
    row_reads: int = 10_000
    gathers: int = 100
    cap_s: float = 3.0  # a measurement stops early past this many seconds


def peer_params(quick: bool, rows: int | None, reps: int | None) -> PeerParams:
    p = PeerParams()
    if quick:
        p = PeerParams(20_000, 1, 300, 3000, 50, 30, 3000, 20, 1.0)
    if rows is not None:
        p.rows = rows
    if reps is not None:
        p.reps = reps
    if p.rows < SLICE:
        raise SystemExit(f"--rows must be at least {SLICE}")
    return p


def parse_peer_list(spec: str | None) -> list[str]:
    """``all`` or a comma-separated list of peer keys; tensorblob is always first."""
    if spec is None or spec == "all":
        return list(PEER_KEYS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise SystemExit(
            f"--peers: unknown peer(s) {', '.join(bad)}; known: {', '.join(PEER_KEYS)}"
        )
    return ["tensorblob", *[k for k in PEER_KEYS if k in names and k != "tensorblob"]]


def parse_workloads(spec: str | None) -> list[str]:
    if not spec:
        return list(WORKLOAD_KEYS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in WORKLOAD_KEYS]
    if bad:
        raise SystemExit(
            f"--only with --peers: unknown workload(s) {', '.join(bad)}; "
            f"known: {', '.join(WORKLOAD_KEYS)}"
        )
    return [k for k in WORKLOAD_KEYS if k in names]


def default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tensorblob-bench")


def ensure_orig(cache: str, install: bool) -> tuple[str | None, str]:
    """The directory holding tensorblob 0.3.0 (installed there on demand), or None and why."""
    target = os.path.join(cache, f"tensorblob-{ORIG_VERSION}")
    marker = os.path.join(target, f"tensorblob-{ORIG_VERSION}.dist-info")
    if os.path.isdir(marker):
        return target, f"cached in {target}"
    if not install:
        return None, f"not in {target} (--no-install given)"
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="orig-", dir=cache)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp]
    print(f"  installing tensorblob {ORIG_VERSION} into {target} (pip --no-deps)", flush=True)
    try:
        res = subprocess.run(
            [*cmd, *ORIG_REQS], capture_output=True, text=True, check=False, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        return None, f"pip failed: {e}"
    if res.returncode != 0 or not os.path.isdir(
        os.path.join(tmp, f"tensorblob-{ORIG_VERSION}.dist-info")
    ):
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"pip install failed: {tail[0]}"
    remove(target)
    os.rename(tmp, target)
    return target, f"installed into {target}"


def availability(keys: list[str], cache: str, install: bool) -> dict[str, tuple[bool, str]]:
    out: dict[str, tuple[bool, str]] = {}
    for key in keys:
        cls = PEERS[key]
        if cls is OrigTB:
            where, why = ensure_orig(cache, install)
            out[key] = (where is not None, why if where else f"skipped: {why}")
            continue
        missing = [m for m in cls.modules if importlib.util.find_spec(m) is None]
        if missing:
            out[key] = (False, f"not installed ({', '.join(missing)}): pip install '.[bench]'")
            continue
        if key == "zarr":
            v = importlib.metadata.version("zarr")
            if int(v.split(".")[0]) < 3:
                out[key] = (False, f"zarr {v} installed; the peer needs zarr>=3")
                continue
        out[key] = (True, "")
    return out


def peer_versions(keys: list[str], orig_dir: str | None) -> dict[str, str]:
    v: dict[str, str] = {}
    for key in keys:
        if key == "h5py":
            h5py = lib("h5py")
            v[key] = f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}"
        elif key == "zarr":
            v[key] = f"zarr {importlib.metadata.version('zarr')}"
        elif key == "lmdb":
            lmdb = lib("lmdb")
            c = ".".join(map(str, lmdb.version()))
            v[key] = f"py-lmdb {importlib.metadata.version('lmdb')}, LMDB {c}"
        elif key == "sqlite":
            v[key] = f"sqlite3 {sqlite3.sqlite_version}"
        elif key == "tensorblob-0.3.0":
            v[key] = f"tensorblob {ORIG_VERSION} from PyPI ({orig_dir})"
        elif key == "np.memmap":
            v[key] = f"numpy {np.__version__}"
    return v


@dataclass
class Cell:
    workload: str
    peer: str
    samples: list[float]
    errors: list[str]
    ok: bool | None  # gives the asked durability; None for read-only workloads
    tag: str
    text: str
    value: float | None = None
    ratio: float | None = None  # > 1: the peer is better than tensorblob


class Orchestrator:
    def __init__(
        self,
        *,
        work: str,
        p: PeerParams,
        peers: list[str],
        workloads: list[str],
        repo: str,
        orig_dir: str | None,
        threads: int | None,
    ) -> None:
        self.work, self.p, self.peers, self.workloads = work, p, peers, workloads
        self.repo, self.orig_dir, self.threads = repo, orig_dir, threads
        self.stores: dict[str, str] = {}
        self.src = os.path.join(work, "src.f32")

    def run_task(self, peer: str, workload: str, **extra: Any) -> dict:
        d = tempfile.mkdtemp(prefix=f"{workload}-", dir=self.work)
        orig = peer == OrigTB.key
        task = {
            "peer": peer,
            "workload": workload,
            "src": self.src,
            "rows": self.p.rows,
            "params": asdict(self.p),
            "dir": d,
            "threads": self.threads,
            "tensorblob_from": self.orig_dir if orig else self.repo,
            **extra,
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = (self.orig_dir if orig else self.repo) or ""
        env.setdefault("PYTHONWARNINGS", "ignore")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)]
        try:
            res = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {WORKER_TIMEOUT} s"}
        finally:
            shutil.rmtree(d, ignore_errors=True)
        if res.returncode != 0:
            lines = res.stderr.strip().splitlines()
            return {"error": (lines[-1] if lines else f"exit {res.returncode}")[:300]}
        return json.loads(res.stdout.strip().splitlines()[-1])

    def prepare(self) -> None:
        rng = np.random.default_rng(0)
        with open(self.src, "wb") as f:
            for i in range(0, self.p.rows, SLICE):
                m = min(SLICE, self.p.rows - i)
                f.write(rng.standard_normal((m, DIM), dtype=np.float32).tobytes())
        if not any(w in READ_ONLY for w in self.workloads):
            return
        for key in self.peers:
            path = os.path.join(self.work, f"read-{key}{PEERS[key].ext}")
            t0 = now()
            out = self.run_task(key, "build", path=path)
            if "error" in out:
                print(f"  build {key}: ERROR {out['error']}", flush=True)
                continue
            self.stores[key] = path
            print(f"  built {key} read store ({now() - t0:.1f} s)", flush=True)

    def measure(self) -> list[Cell]:
        cells = []
        for wk in self.workloads:
            w = next(x for x in WORKLOADS if x.key == wk)
            print(f"[{wk}] {w.name}", flush=True)
            got: dict[str, Cell] = {}
            for key in self.peers:
                cls = PEERS[key]
                ok, tag, text = cls.dur.get(wk, (None, "read-only", "read-only"))
                got[key] = Cell(wk, key, [], [], ok, tag, text)
            for rep in range(self.p.reps):
                for key in run_order(self.peers, rep, self.workloads.index(wk)):
                    extra = {"rep": rep}
                    if wk in READ_ONLY:
                        if key not in self.stores:
                            got[key].errors.append("no read store (build failed)")
                            continue
                        extra["path"] = self.stores[key]
                    t0 = now()
                    out = self.run_task(key, wk, **extra)
                    if "error" in out:
                        got[key].errors.append(out["error"])
                        shown = f"ERROR {out['error']}"
                    else:
                        got[key].samples.append(out["value"])
                        shown = f"{fmt(out['value'])} {w.unit}"
                    print(
                        f"  rep {rep + 1}/{self.p.reps} {key:<17} {shown} ({now() - t0:.1f} s)",
                        flush=True,
                    )
            base = got["tensorblob"]
            base_v = statistics.median(base.samples) if base.samples else None
            for key in self.peers:
                c = got[key]
                if c.samples:
                    c.value = statistics.median(c.samples)
                    if base_v and c.value:
                        c.ratio = c.value / base_v if w.better == "higher" else base_v / c.value
                cells.append(c)
        return cells


def run_order(peers: list[str], rep: int, shift: int = 0) -> list[str]:
    """The order of the peers in repetition ``rep`` of the ``shift``-th workload.

    A plain rotation keeps every peer's neighbours: the peer after the
    longest-running one would come right after it in every repetition, and
    on this VM the slot after a long write, or the first one, is slow for
    whoever runs in it (docs/performance.md, line 5). So each repetition
    steps through the peers by a different stride coprime with their number:
    every peer once per repetition, after a different predecessor each time.
    The start puts the first peer (tensorblob) at position ``shift + rep``,
    so that its slot moves too.
    """
    n = len(peers)
    strides = [m for m in range(1, n) if math.gcd(m, n) == 1] or [1]
    m = strides[rep % len(strides)]
    start = -((shift + rep) % n) * m
    return [peers[(start + i * m) % n] for i in range(n)]


# -- the table ----------------------------------------------------------------------


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 10_000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell_text(c: Cell) -> str:
    if c.value is None:
        return "error" if c.errors else "-"
    flag = "✗ " if c.ok is False else ""
    parts = [f"{flag}{fmt(c.value)}"]
    if c.peer != "tensorblob" and c.ratio is not None:
        parts.append(f"{c.ratio:.2f}x")
    if c.ok is not None:
        parts.append(c.tag)
    if c.errors:
        parts.append(f"{len(c.errors)} failed")
    return " · ".join(parts)


def table(cells: list[Cell], peers: list[str], workloads: list[str]) -> str:
    head = ["workload", "unit", *[PEERS[k].label for k in peers]]
    rows = [head, ["---"] * len(head)]
    for wk in workloads:
        w = next(x for x in WORKLOADS if x.key == wk)
        by = {c.peer: c for c in cells if c.workload == wk}
        rows.append([w.name, w.unit, *[cell_text(by[k]) for k in peers]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for r in rows:
        out = [c.ljust(w) if c != "---" else "-" * w for c, w in zip(r, widths, strict=True)]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def spread_table(cells: list[Cell], peers: list[str], workloads: list[str]) -> str:
    """min..max over repetitions of every cell: how far to trust each median."""
    head = ["workload", *[PEERS[k].label for k in peers]]
    rows = [head, ["---"] * len(head)]
    for wk in workloads:
        by = {c.peer: c for c in cells if c.workload == wk}
        line = [next(w.name for w in WORKLOADS if w.key == wk).split(" ", 1)[0] + " " + wk]
        for k in peers:
            s = by[k].samples
            line.append(f"{fmt(min(s))}..{fmt(max(s))}" if s else "-")
        rows.append(line)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "| "
        + " | ".join(c.ljust(w) if c != "---" else "-" * w for c, w in zip(r, widths, strict=True))
        + " |"
        for r in rows
    )


def behind(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """Cells where the peer beats tensorblob: (giving the asked durability, flagged)."""
    ahead = sorted(
        (c for c in cells if c.peer != "tensorblob" and c.ratio is not None and c.ratio > 1),
        key=lambda c: (WORKLOAD_KEYS.index(c.workload), -c.ratio),
    )
    return [c for c in ahead if c.ok is not False], [c for c in ahead if c.ok is False]


def run(args: Any, facts: dict[str, str], work: str) -> int:
    """Entry point from ``scripts/bench.py --peers``; ``work`` is a fresh scratch directory."""
    p = peer_params(args.quick, args.rows, args.reps)
    keys = parse_peer_list(args.peers)
    workloads = parse_workloads(args.only)
    cache = os.path.abspath(args.peer_cache or default_cache())
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = time.time()
    print("tensorblob beside the peers" + (" (--quick)" if args.quick else ""))
    print("command: " + " ".join(["python", *sys.argv]))
    avail = availability(keys, cache, not args.no_install)
    for key in keys:
        ok, why = avail[key]
        if not ok:
            print(f"  peer {key}: {why}; its column is skipped", flush=True)
    peers = [k for k in keys if avail[k][0]]
    if "tensorblob" not in peers:
        raise SystemExit("tensorblob itself is not importable")
    orig_dir = os.path.join(cache, f"tensorblob-{ORIG_VERSION}") if OrigTB.key in peers else None
    versions = peer_versions(peers, orig_dir)
    for k, v in facts.items():
        print(f"  {k:<11} {v}")
    for k in peers[1:]:
        print(f"  {k:<17} {versions.get(k, '')}")
    print(
        f"  params      rows={p.rows} x {DIM} float32, medians of {p.reps} "
        "(one fresh process per measurement, peers alternating)"
    )
    orch = Orchestrator(
        work=work,
        p=p,
        peers=peers,
        workloads=workloads,
        repo=repo,
        orig_dir=orig_dir,
        threads=args.threads,
    )
    orch.prepare()
    cells = orch.measure()
    elapsed = time.time() - started
    print()
    print(table(cells, peers, workloads))
    print()
    print("Ratios: > 1 means the peer is better than tensorblob (higher rate, lower time).")
    print("✗: the peer does not give the durability the workload asks for (see below).")
    print("\nSpread, min..max over repetitions:")
    print(spread_table(cells, peers, workloads))
    print("\nDurability per cell (what each peer actually gave):")
    for wk in workloads:
        w = next(x for x in WORKLOADS if x.key == wk)
        if wk in READ_ONLY:
            continue
        print(f"  {w.name} (asks: {w.asks})")
        for c in cells:
            if c.workload == wk:
                mark = "✗" if c.ok is False else "ok"
                print(f"    {mark:<2} {PEERS[c.peer].label}: {c.text}")
    print("\nLayouts:")
    for k in peers:
        print(f"  {PEERS[k].label}: {PEERS[k].layout}")
    fair, flagged = behind(cells)
    print("\nWhere tensorblob is behind (ratio > 1), peers giving the asked durability:")
    for c in fair:
        print(f"  {c.workload}: {PEERS[c.peer].label} {c.ratio:.2f}x")
    if flagged:
        print("... and flagged cells (✗, the peer gave less than asked):")
        for c in flagged:
            print(f"  {c.workload}: {PEERS[c.peer].label} {c.ratio:.2f}x")
    errors = [c for c in cells if c.errors]
    for c in errors:
        print(f"errors in {c.workload}/{c.peer}: {c.errors[0]}")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\n{elapsed:.0f} s; load average at the end {load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "mode": "peers",
                    "command": " ".join(["python", *sys.argv]),
                    "machine": facts,
                    "peers": {k: versions.get(k, "this tree") for k in peers},
                    "skipped": {k: avail[k][1] for k in keys if not avail[k][0]},
                    "params": asdict(p),
                    "elapsed_s": elapsed,
                    "workloads": [asdict(w) for w in WORKLOADS if w.key in workloads],
                    "layouts": {k: PEERS[k].layout for k in peers},
                    "cells": [asdict(c) for c in cells],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit("run this through: python scripts/bench.py --peers [LIST]")
