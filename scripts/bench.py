#!/usr/bin/env python
"""Benchmark tensorblob beside a raw ``np.memmap`` of the same bytes and an in-memory tensor.

Every figure is measured for each implementation in repetitions that alternate
between implementations (the order rotates every repetition), and the median
over repetitions is reported. The page cache is warm: every file is read once,
and every reader object reads everything once, before timing starts.

Usage::

    python scripts/bench.py              # full run: 200k rows of 768 float32, 5/15 reps
    python scripts/bench.py --quick      # about a minute
    python scripts/bench.py --rows 500000 --dir /mnt/fast --json results.json
    python scripts/bench.py --peers      # beside h5py, zarr, LMDB, SQLite, ... (bench_peers.py)

The exit code is 0 whatever the PASS/MISS verdicts: this is a report, not a test.
Everything the run creates lives in one fresh directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

import tensorblob
from tensorblob import TensorBlob

DIM = 768  # row shape (DIM,) float32 for every figure except h
SLICE = 8192  # rows per sequential read/write batch
GATHER = 512  # rows per random batch gather
OPEN_ROWS = 1_000_000  # rows of the blob opened in figure h
OPEN_SHAPE = (4,)
MEM_BLOCK = 256  # figure i: block_size
MEM_CACHED = 16  # figure i: max_cached_blocks
MEM_BLOCKS = 10 * MEM_CACHED  # figure i: blocks in the blob

now = time.perf_counter
TB_IMPLS = ("tb", "each", "txn", "r", "a")  # sample-key prefixes of tensorblob implementations


# -- parameters ----------------------------------------------------------------


@dataclass
class Params:
    rows: int
    reps: int  # repetitions of the slow figures (d, e, g, i)
    fast_reps: int  # repetitions of the cheap figures (a, b, c, f, h): more, to outvote noise
    row_batches: int  # figure b: batches of ROW_CALLS single-row reads per rep
    gathers: int  # figure c: gathers per rep
    single_writes: int  # figure e: single-row writes per rep
    full_commits: int  # figure f: commits per rep
    sessions: int  # figure g: sessions per rep
    opens: int  # figure h: opens per rep and mode
    mem_reads: int  # figure i: random reads per rep


ROW_CALLS = 1000  # figure b: calls timed together (per-call latency = batch time / calls)


def params_for(quick: bool, rows: int | None) -> Params:
    if quick:
        p = Params(50_000, 3, 7, 5, 50, 5_000, 8, 60, 10, 4_000)
    else:
        p = Params(200_000, 5, 15, 10, 100, 20_000, 20, 250, 20, 20_000)
    if rows is not None:
        p.rows = rows
    if p.rows < SLICE:
        raise SystemExit(f"--rows must be at least {SLICE}")
    return p


# -- machine facts -------------------------------------------------------------


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_facts(where: str) -> dict[str, str]:
    cpu = platform.processor() or "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    df = _run(["df", "-T", where]).splitlines()
    device, fstype = [*df[-1].split()[:2], "?", "?"][:2] if len(df) > 1 else ("?", "?")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 0
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = _run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"]) or "no git"
    diff = _run(["git", "-C", repo, "diff", "HEAD", "--", "tensorblob"])
    if diff:
        digest = hashlib.sha1(diff.encode()).hexdigest()[:8]
        commit += f" + uncommitted changes in tensorblob/ (diff sha1 {digest})"
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {affinity} usable",
        "ram": f"{mem_kb / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "numpy": np.__version__,
        "tensorblob": f"{tensorblob.__version__} ({commit})",
        "dir": where,
        "filesystem": f"{fstype} on {device} (stat -f: {_run(['stat', '-f', '-c', '%T', where])})",
        "load": loadavg(),
    }


def loadavg() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every figure."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- figures and the table -----------------------------------------------------


@dataclass
class Figure:
    key: str
    name: str
    unit: str
    tb: float
    baseline: float | None  # the value the target compares with
    baseline_name: str  # np.memmap | in-memory | fdatasync | target | max_cached_blocks
    better: str  # "higher" or "lower": which way the tensorblob value should go
    limit: float | None  # bound on tb / baseline; None: informational only
    target: str
    memmap: float | None = None
    inmem: float | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.tb / self.baseline

    @property
    def result(self) -> str:
        r = self.ratio
        if self.limit is None or r is None:
            return "info"
        ok = r >= self.limit if self.better == "higher" else r <= self.limit
        return "PASS" if ok else "MISS"


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if float(v).is_integer() and a < 10_000:
        return str(int(v))
    if a >= 10_000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def spread(f: Figure) -> str:
    """Min..max of the tensorblob value over repetitions: how much to trust the median."""
    values = next((v for k, v in f.samples.items() if k.split(".")[0] in TB_IMPLS), None)
    if not values or len(values) < 2:
        return "-"
    return f"{fmt(min(values))}..{fmt(max(values))}"


def table(figures: list[Figure]) -> str:
    head = [
        "figure",
        "unit",
        "tensorblob",
        "baseline",
        "ratio",
        "target",
        "result",
        "tensorblob range",
        "np.memmap",
        "in-memory",
    ]
    rows = [head, ["---"] * len(head)]
    for f in figures:
        base = "-" if f.baseline is None else f"{fmt(f.baseline)} ({f.baseline_name})"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x"
        rows.append(
            [
                f"{f.key}. {f.name}",
                f.unit,
                fmt(f.tb),
                base,
                ratio,
                f.target,
                f.result,
                spread(f),
                fmt(f.memmap),
                fmt(f.inmem),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if c != "---" else "-" * w for c, w in zip(r, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- measurement helpers -------------------------------------------------------


def interleave(
    reps: int, impls: dict[str, Callable[[], dict[str, float]]]
) -> dict[str, list[float]]:
    """Run every implementation ``reps`` times, alternating, rotating the order each rep.

    Each callable does one repetition and returns named values; the result maps
    ``"impl.name"`` to the list of that value over repetitions.
    """
    names = list(impls)
    samples: dict[str, list[float]] = {}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            for key, value in impls[name]().items():
                samples.setdefault(f"{name}.{key}", []).append(value)
    return samples


def med(samples: dict[str, list[float]], key: str) -> float:
    return statistics.median(samples[key])


def warm_files(path: str) -> None:
    """Read every file under ``path`` (or the file itself) once, into the page cache."""
    files = [path] if os.path.isfile(path) else []
    for root, _dirs, names in os.walk(path):
        files.extend(os.path.join(root, n) for n in names)
    for name in files:
        with open(name, "rb", buffering=0) as f:
            while f.read(1 << 23):
                pass


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def mappings_under(directory: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(directory in line for line in f)


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def build_blob(path: str, data: torch.Tensor, **kw: object) -> None:
    blob = TensorBlob.open(path, "w", dtype=data.dtype, shape=tuple(data.shape[1:]), **kw)
    try:
        for i in range(0, data.shape[0], SLICE):
            blob.write(data[i : i + SLICE])
    finally:
        blob.close()


def build_raw(path: str, data: torch.Tensor) -> None:
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=tuple(data.shape))
    mm[:] = data.numpy()
    mm.flush()
    del mm


# -- the figures ---------------------------------------------------------------


class Bench:
    def __init__(self, work: str, p: Params) -> None:
        self.work = work
        self.p = p
        self.figures: list[Figure] = []
        self.log = print

    def sub(self, name: str) -> str:
        path = os.path.join(self.work, name)
        os.makedirs(path, exist_ok=True)
        return path

    def add(self, fig: Figure) -> None:
        self.figures.append(fig)
        self.log(
            f"  {fig.key}. {fig.name}: tensorblob {fmt(fig.tb)} {fig.unit}, "
            f"baseline {fmt(fig.baseline)} ({fig.baseline_name}) -> {fig.result}"
        )

    # a-c: reads of one blob, one raw file and one tensor holding the same rows
    def reads(self) -> None:
        p = self.p
        n = p.rows
        d = self.sub("read")
        data = torch.randn(n, DIM)
        blob_path, raw_path = os.path.join(d, "x.blob"), os.path.join(d, "x.f32")
        build_blob(blob_path, data)
        build_raw(raw_path, data)
        warm_files(blob_path)
        warm_files(raw_path)
        blob = TensorBlob.open(blob_path, "r")
        mm = np.memmap(raw_path, dtype=np.float32, mode="r", shape=(n, DIM))
        mmv = mm.view(np.ndarray)  # same mapping, without the memmap subclass per index
        t = data
        try:
            for i in range(0, n, SLICE):  # every mapped page touched once before timing
                blob[i : i + SLICE]
                np.array(mm[i : i + SLICE])
            nbytes = n * DIM * 4

            def seq(read: Callable[[int], object]) -> Callable[[], dict[str, float]]:
                def run() -> dict[str, float]:
                    t0 = now()
                    for i in range(0, n, SLICE):
                        read(i)
                    return {"v": nbytes / (now() - t0) / 1e9}

                return run

            s = interleave(
                p.fast_reps,
                {
                    "tb": seq(lambda i: blob[i : i + SLICE]),
                    "mm": seq(lambda i: torch.from_numpy(np.array(mm[i : i + SLICE]))),
                    "mem": seq(lambda i: t[i : i + SLICE].clone()),
                },
            )
            self.add(
                Figure(
                    "a",
                    "sequential read, 8192-row slices",
                    "GB/s",
                    med(s, "tb.v"),
                    med(s, "mm.v"),
                    "np.memmap",
                    "higher",
                    0.8,
                    ">= 0.8x np.memmap",
                    memmap=med(s, "mm.v"),
                    inmem=med(s, "mem.v"),
                    samples=s,
                )
            )

            rng = random.Random(1)
            idx = [rng.randrange(n) for _ in range(p.row_batches * ROW_CALLS)]

            def rows(read: Callable[[int], object]) -> Callable[[], dict[str, float]]:
                def run() -> dict[str, float]:
                    per_call = []
                    for b in range(p.row_batches):
                        chunk = idx[b * ROW_CALLS : (b + 1) * ROW_CALLS]
                        t0 = now()
                        for i in chunk:
                            read(i)
                        per_call.append((now() - t0) / ROW_CALLS * 1e6)
                    return {"v": statistics.median(per_call)}

                return run

            s = interleave(
                p.fast_reps,
                {
                    "tb": rows(lambda i: blob[i]),
                    "mm": rows(lambda i: torch.from_numpy(mmv[i].copy())),
                    "mem": rows(lambda i: t[i].clone()),
                },
            )
            self.add(
                Figure(
                    "b",
                    "random single-row read blob[i]",
                    "us/call",
                    med(s, "tb.v"),
                    med(s, "mem.v"),
                    "in-memory",
                    "lower",
                    2.0,
                    "<= 2x in-memory",
                    memmap=med(s, "mm.v"),
                    inmem=med(s, "mem.v"),
                    note=f"median over batches of {ROW_CALLS} calls of the mean per call",
                    samples=s,
                )
            )

            gen = torch.Generator().manual_seed(2)
            gidx = [torch.randint(n, (GATHER,), generator=gen) for _ in range(p.gathers)]
            gidx_np = [g.numpy() for g in gidx]

            def gather(read: Callable[[int], object]) -> Callable[[], dict[str, float]]:
                def run() -> dict[str, float]:
                    per_call = []
                    for k in range(p.gathers):
                        t0 = now()
                        read(k)
                        per_call.append((now() - t0) * 1e6)
                    return {"v": statistics.median(per_call)}

                return run

            s = interleave(
                p.fast_reps,
                {
                    "tb": gather(lambda k: blob[gidx[k]]),
                    "mm": gather(lambda k: torch.from_numpy(mmv[gidx_np[k]])),
                    "mem": gather(lambda k: t[gidx[k]]),
                },
            )
            self.add(
                Figure(
                    "c",
                    f"random {GATHER}-row gather blob[idx]",
                    "us/call",
                    med(s, "tb.v"),
                    med(s, "mem.v"),
                    "in-memory",
                    "lower",
                    1.5,
                    "<= 1.5x in-memory",
                    memmap=med(s, "mm.v"),
                    inmem=med(s, "mem.v"),
                    samples=s,
                )
            )
        finally:
            blob.close()
            remove(d)

    # d: sequential write of a fresh blob / raw file / tensor
    def seq_write(self) -> None:
        p = self.p
        n = p.rows
        d = self.sub("write")
        src = torch.randn(n, DIM)
        src_np = src.numpy()
        nbytes = n * DIM * 4
        counter = iter(range(1_000_000))

        def tb() -> dict[str, float]:
            path = os.path.join(d, f"w{next(counter)}.blob")
            blob = TensorBlob.open(path, "w", dtype=torch.float32, shape=(DIM,), sync="normal")
            try:
                t0 = now()
                for i in range(0, n, SLICE):
                    blob.write(src[i : i + SLICE])
                t1 = now()
            finally:
                blob.close()
            t2 = now()
            remove(path)
            return {"w": nbytes / (t1 - t0) / 1e9, "c": nbytes / (t2 - t0) / 1e9}

        def mm() -> dict[str, float]:
            path = os.path.join(d, f"w{next(counter)}.f32")
            m = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, DIM))
            t0 = now()
            for i in range(0, n, SLICE):
                m[i : i + SLICE] = src_np[i : i + SLICE]
            t1 = now()
            m.flush()
            t2 = now()
            del m
            remove(path)
            return {"w": nbytes / (t1 - t0) / 1e9, "c": nbytes / (t2 - t0) / 1e9}

        def mem() -> dict[str, float]:
            dst = torch.empty(n, DIM)
            t0 = now()
            for i in range(0, n, SLICE):
                dst[i : i + SLICE].copy_(src[i : i + SLICE])
            v = nbytes / (now() - t0) / 1e9
            return {"w": v, "c": v}

        try:
            s = interleave(p.reps, {"tb": tb, "mm": mm, "mem": mem})
        finally:
            remove(d)
        for key, what, extra in (("w", "writes only", ""), ("c", "writes + close", "/flush")):
            self.add(
                Figure(
                    f"d{'1' if key == 'w' else '2'}",
                    f"sequential write, 8192-row batches, {what}{extra}",
                    "GB/s",
                    med(s, f"tb.{key}"),
                    med(s, f"mm.{key}"),
                    "np.memmap",
                    "higher",
                    0.9,
                    ">= 0.9x np.memmap",
                    memmap=med(s, f"mm.{key}"),
                    inmem=med(s, f"mem.{key}"),
                    note="open and np.memmap creation excluded; close vs mm.flush() in d2",
                    samples={k: v for k, v in s.items() if k.endswith(key)},
                )
            )

    # e: single-row write() calls, each its own transaction / all in one
    def single_writes(self) -> None:
        p = self.p
        r = p.single_writes
        d = self.sub("single")
        src = torch.randn(r, DIM)
        rows = list(src.unbind(0))
        rows_np = [x.numpy() for x in rows]
        counter = iter(range(1_000_000))

        def tb(in_txn: bool) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                path = os.path.join(d, f"s{next(counter)}.blob")
                blob = TensorBlob.open(path, "w", dtype=torch.float32, shape=(DIM,))
                try:
                    t0 = now()
                    if in_txn:
                        with blob.transaction():
                            for row in rows:
                                blob.write(row)
                    else:
                        for row in rows:
                            blob.write(row)
                    dt = now() - t0
                finally:
                    blob.close()
                remove(path)
                return {"v": r / dt}

            return run

        def mm() -> dict[str, float]:
            path = os.path.join(d, f"s{next(counter)}.f32")
            m = np.memmap(path, dtype=np.float32, mode="w+", shape=(r, DIM))
            mv = m.view(np.ndarray)
            t0 = now()
            for i, row in enumerate(rows_np):
                mv[i] = row
            dt = now() - t0
            del m, mv
            remove(path)
            return {"v": r / dt}

        def mem() -> dict[str, float]:
            dst = torch.empty(r, DIM)
            t0 = now()
            for i, row in enumerate(rows):
                dst[i].copy_(row)
            return {"v": r / (now() - t0)}

        try:
            s = interleave(p.reps, {"each": tb(False), "txn": tb(True), "mm": mm, "mem": mem})
        finally:
            remove(d)
        for key, name, goal in (
            ("each", "single-row write(), one transaction each", 100_000),
            ("txn", "single-row write() inside one transaction()", 300_000),
        ):
            self.add(
                Figure(
                    "e1" if key == "each" else "e2",
                    name,
                    "rows/s",
                    med(s, f"{key}.v"),
                    goal,
                    "target",
                    "higher",
                    1.0,
                    f">= {goal // 1000}k rows/s",
                    memmap=med(s, "mm.v"),
                    inmem=med(s, "mem.v"),
                    note=f"{r} rows of {DIM} float32; open/close excluded",
                    samples={k: v for k, v in s.items() if k.startswith((key, "mm", "mem"))},
                )
            )

    # f: sync="full" commit latency vs a bare fdatasync
    def full_commit(self) -> None:
        p = self.p
        c = p.full_commits
        d = self.sub("full")
        path = os.path.join(d, "f.blob")
        build_blob(path, torch.randn(100, DIM))
        row = torch.randn(DIM)
        row_bytes = row.numpy().tobytes()
        counter = iter(range(1_000_000))

        def tb() -> dict[str, float]:
            blob = TensorBlob.open(path, "a", sync="full")
            lat = []
            try:
                for _ in range(c):
                    t0 = now()
                    blob.write(row)
                    lat.append((now() - t0) * 1e3)
            finally:
                blob.close()
            return {"v": statistics.median(lat)}

        def fsync() -> dict[str, float]:
            name = os.path.join(d, f"small{next(counter)}")
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            lat = []
            try:
                for _ in range(c):
                    t0 = now()
                    os.write(fd, row_bytes)
                    os.fdatasync(fd)
                    lat.append((now() - t0) * 1e3)
            finally:
                os.close(fd)
                remove(name)
            return {"v": statistics.median(lat)}

        def mm() -> dict[str, float]:
            name = os.path.join(d, f"mm{next(counter)}")
            m = np.memmap(name, dtype=np.float32, mode="w+", shape=(c, DIM))
            lat = []
            for i in range(c):
                t0 = now()
                m[i] = row.numpy()
                m.flush()
                lat.append((now() - t0) * 1e3)
            del m
            remove(name)
            return {"v": statistics.median(lat)}

        try:
            s = interleave(p.fast_reps, {"tb": tb, "fsync": fsync, "mm": mm})
        finally:
            remove(d)
        self.add(
            Figure(
                "f",
                'sync="full" single-row commit latency',
                "ms",
                med(s, "tb.v"),
                med(s, "fsync.v"),
                "fdatasync",
                "lower",
                3.0,
                "<= 3x write+fdatasync",
                memmap=med(s, "mm.v"),
                note="baseline: append one row to a small file + os.fdatasync; "
                "np.memmap column: mm[i] = row; mm.flush()",
                samples=s,
            )
        )

    # g: collector sessions (open 'a', write 16 rows, close)
    def sessions(self) -> None:
        p = self.p
        k = p.sessions
        d = self.sub("sessions")
        blob_path, raw_path = os.path.join(d, "g.blob"), os.path.join(d, "g.f32")
        TensorBlob.open(blob_path, "w", dtype=torch.float32, shape=(DIM,)).close()
        open(raw_path, "wb").close()
        batch = torch.randn(16, DIM)
        batch_np = batch.numpy()
        rb = batch_np.nbytes

        def tb(sync: str = "normal") -> dict[str, float]:
            t0 = now()
            for _ in range(k):
                blob = TensorBlob.open(blob_path, "a", sync=sync)
                blob.write(batch)
                blob.close()
            return {"v": k / (now() - t0)}

        def mm() -> dict[str, float]:
            t0 = now()
            for _ in range(k):
                end = os.path.getsize(raw_path)
                os.truncate(raw_path, end + rb)
                m = np.memmap(raw_path, dtype=np.float32, mode="r+", offset=end, shape=(16, DIM))
                m[:] = batch_np
                m.flush()
                del m
            return {"v": k / (now() - t0)}

        try:
            s = interleave(p.reps, {"tb": tb, "full": lambda: tb("full"), "mm": mm})
        finally:
            remove(d)
        self.add(
            Figure(
                "g",
                "collector session: open 'a', write 16 rows, close",
                "sessions/s",
                med(s, "tb.v"),
                1000,
                "target",
                "higher",
                1.0,
                ">= 1000/s",
                memmap=med(s, "mm.v"),
                note="np.memmap column: grow file, map 16 rows, write, flush, unmap",
                samples=s,
            )
        )
        # g2: the same under sync="full": the write's rows travel in the journal
        # (one flush), and the close leaves them there (design.md, item 21).
        self.add(
            Figure(
                "g2",
                "collector session, sync='full': open 'a', write 16 rows, close",
                "sessions/s",
                med(s, "full.v"),
                med(s, "tb.v"),
                "figure g (sync='normal')",
                "higher",
                0.5,
                ">= 0.5x figure g",
                samples=s,
            )
        )

    # h: open of a 1M-row blob
    def opens(self) -> None:
        p = self.p
        d = self.sub("open")
        blob_path, raw_path = os.path.join(d, "h.blob"), os.path.join(d, "h.f32")
        data = torch.randn(OPEN_ROWS, *OPEN_SHAPE)
        build_blob(blob_path, data)
        build_raw(raw_path, data)
        warm_files(blob_path)

        def tb(mode: str) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                lat = []
                for _ in range(p.opens):
                    t0 = now()
                    blob = TensorBlob.open(blob_path, mode)
                    lat.append((now() - t0) * 1e3)
                    blob.close()
                return {"v": statistics.median(lat)}

            return run

        def mm() -> dict[str, float]:
            lat = []
            for _ in range(p.opens):
                t0 = now()
                m = np.memmap(raw_path, dtype=np.float32, mode="r", shape=(OPEN_ROWS, 4))
                lat.append((now() - t0) * 1e3)
                del m
            return {"v": statistics.median(lat)}

        try:
            s = interleave(p.fast_reps, {"r": tb("r"), "a": tb("a"), "mm": mm})
        finally:
            remove(d)
        for mode in ("r", "a"):
            self.add(
                Figure(
                    f"h{'1' if mode == 'r' else '2'}",
                    f"open 1M-row (4,) float32 blob, mode '{mode}'",
                    "ms",
                    med(s, f"{mode}.v"),
                    5.0,
                    "target",
                    "lower",
                    1.0,
                    "<= 5 ms",
                    memmap=med(s, "mm.v"),
                    note="close excluded; np.memmap column: np.memmap(path, mode='r')",
                    samples={k: v for k, v in s.items() if k.startswith((mode, "mm"))},
                )
            )

    # i: mappings and RSS while random-reading many more blocks than are cached
    def memory(self) -> None:
        p = self.p
        n = MEM_BLOCK * MEM_BLOCKS
        d = self.sub("memory")
        blob_path, raw_path = os.path.join(d, "i.blob"), os.path.join(d, "i.f32")
        data = torch.randn(n, DIM)
        build_blob(blob_path, data, block_size=MEM_BLOCK)
        build_raw(raw_path, data)
        del data
        warm_files(blob_path)
        warm_files(raw_path)
        rng = random.Random(3)
        idx = [rng.randrange(n) for _ in range(p.mem_reads)]
        every = max(1, p.mem_reads // 100)

        def measure(
            opener: Callable[[], tuple[Callable[[int], object], Callable[[], None]]], where: str
        ) -> dict[str, float]:
            gc.collect()
            rss0 = rss_kb()
            read, close = opener()
            peak_maps, peak_rss = 0, rss0
            for j, i in enumerate(idx):
                read(i)
                if j % every == 0:
                    peak_maps = max(peak_maps, mappings_under(where))
                    peak_rss = max(peak_rss, rss_kb())
            peak_maps = max(peak_maps, mappings_under(where))
            peak_rss = max(peak_rss, rss_kb())
            close()
            gc.collect()
            return {
                "maps": peak_maps,
                "rss": (peak_rss - rss0) / 1024,
                "left": mappings_under(where),
            }

        def tb() -> dict[str, float]:
            def opener() -> tuple[Callable[[int], object], Callable[[], None]]:
                blob = TensorBlob.open(blob_path, "r", max_cached_blocks=MEM_CACHED)
                return (lambda i: blob[i]), blob.close

            return measure(opener, blob_path)

        def mm() -> dict[str, float]:
            holder: list[np.ndarray] = []

            def opener() -> tuple[Callable[[int], object], Callable[[], None]]:
                m = np.memmap(raw_path, dtype=np.float32, mode="r", shape=(n, DIM))
                holder.append(m)
                mv = m.view(np.ndarray)
                return (lambda i: torch.from_numpy(mv[i].copy())), holder.clear

            return measure(opener, raw_path)

        def mem() -> dict[str, float]:
            holder: list[torch.Tensor] = []

            def opener() -> tuple[Callable[[int], object], Callable[[], None]]:
                t = torch.from_numpy(np.fromfile(raw_path, dtype=np.float32).reshape(n, DIM))
                holder.append(t)
                return (lambda i: t[i].clone()), holder.clear

            out = measure(opener, raw_path)
            # The allocator may hand back pages that are already resident (freed by
            # earlier figures), so RSS growth understates a tensor: count its size.
            out["rss"] = n * DIM * 4 / 2**20
            return out

        try:
            s = interleave(p.reps, {"tb": tb, "mm": mm, "mem": mem})
        finally:
            remove(d)
        self.add(
            Figure(
                "i1",
                f"mappings, random reads over {MEM_BLOCKS} blocks",
                "maps (peak)",
                max(s["tb.maps"]),
                MEM_CACHED,
                "max_cached_blocks",
                "lower",
                1.0,
                f"<= {MEM_CACHED}",
                memmap=max(s["mm.maps"]),
                inmem=max(s["mem.maps"]),
                note=f"block_size={MEM_BLOCK}, max_cached_blocks={MEM_CACHED}; "
                f"maps left after close: {max(s['tb.left']):.0f}",
                samples=s,
            )
        )
        self.add(
            Figure(
                "i2",
                "RSS growth, same reads",
                "MiB (peak)",
                med(s, "tb.rss"),
                med(s, "mm.rss"),
                "np.memmap",
                "lower",
                None,
                "info",
                memmap=med(s, "mm.rss"),
                inmem=med(s, "mem.rss"),
                note=f"blob of {n * DIM * 4 / 2**20:.0f} MiB; in-memory: the tensor's size",
                samples={k: v for k, v in s.items() if k.endswith(".rss")},
            )
        )


# -- tensorblob.data: one-gather batches and the block-window shuffle ---------------

DATA_BATCH = 512  # rows per DataLoader batch (figure j) and per sampler batch (figure k)
DATA_BLOCK = 1024  # figure k: block_size (3 MiB blocks of 768 float32)
DATA_WINDOW = 4  # figure k: window_blocks


class _PerRow(torch.utils.data.Dataset):
    """The blob as a dataset without ``__getitems__``: DataLoader's per-row default path."""

    def __init__(self, blob: TensorBlob) -> None:
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.blob[i]


def _evict(path: str) -> None:
    """Drop the blob's clean pages from the page cache (as if it were larger than RAM)."""
    for root, _dirs, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def startup_figures(bench: Bench) -> None:
    """Figures l (issue 20): whole-process times of importing the package and of the metadata
    commands, beside ``import torch``, alternating processes; medians."""
    d = bench.sub("startup")
    path = os.path.join(d, "l.blob")
    build_blob(path, torch.randn(1000, DIM))
    warm_files(path)

    def proc(*argv: str) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            t0 = now()
            subprocess.run([sys.executable, *argv], check=True, capture_output=True)
            return {"v": (now() - t0) * 1e3}

        return run

    s = interleave(
        max(3, bench.p.reps),
        {
            "torch": proc("-c", "import torch"),
            "pkg": proc("-c", "import tensorblob"),
            "api": proc("-c", "from tensorblob import TensorBlob"),
            "info": proc("-m", "tensorblob", "info", path),
            "check": proc("-m", "tensorblob", "check", path),
        },
    )
    torch_ms = med(s, "torch.v")
    for key, name, impl, limit in (
        ("l1", "python -c 'import tensorblob'", "pkg", 1.0),
        ("l2", "python -c 'from tensorblob import TensorBlob'", "api", 1.15),
        ("l3", "tensorblob info BLOB (whole process)", "info", None),
        ("l4", "tensorblob check BLOB (whole process)", "check", None),
    ):
        bench.add(
            Figure(
                key,
                name,
                "ms",
                med(s, f"{impl}.v"),
                torch_ms,
                "import torch",
                "lower",
                limit,
                "<= import torch" if limit == 1.0 else ("info" if limit is None else "~ torch"),
                note="target 300 ms" if limit is None else "",
                samples=s,
            )
        )


def out_figures(bench: Bench) -> None:
    """Figures n (issue 18): reads into a caller's buffer (``out=``) beside the default path,
    which allocates: a random gather, and a sequential read of SLICE rows at a time."""
    p = bench.p
    d = bench.sub("out")
    path = os.path.join(d, "n.blob")
    n = min(p.rows, 100_000)
    build_blob(path, torch.randn(n, DIM))
    warm_files(path)
    gen = torch.Generator().manual_seed(5)
    gidx = [torch.randint(n, (GATHER,), generator=gen) for _ in range(p.gathers)]
    buf_g, buf_s = torch.empty(GATHER, DIM), torch.empty(SLICE, DIM)
    with TensorBlob.open(path, "r") as blob:

        def gather(out: torch.Tensor | None) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                t0 = now()
                for idx in gidx:
                    blob.take(idx, out=out) if out is not None else blob[idx]
                return {"v": (now() - t0) / len(gidx) * 1e6}

            return run

        def scan(out: torch.Tensor | None) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                blob.seek(0)
                t0 = now()
                while blob.read(SLICE, out=out).shape[0]:
                    pass
                return {"v": n * DIM * 4 / (now() - t0) / 1e9}

            return run

        s = interleave(
            p.fast_reps,
            {
                "g_out": gather(buf_g),
                "g_new": gather(None),
                "s_out": scan(buf_s),
                "s_new": scan(None),
            },
        )
    remove(d)
    for key, name, unit, better, impl in (
        ("n1", f"random {GATHER}-row gather into out= (take)", "us", "lower", "g"),
        ("n2", f"sequential read({SLICE}) into out=", "GB/s", "higher", "s"),
    ):
        bench.add(
            Figure(
                key,
                name,
                unit,
                med(s, f"{impl}_out.v"),
                med(s, f"{impl}_new.v"),
                "default path",
                better,
                None,
                "info: vs allocating",
                note="out= saves the allocation; a pinned out= saves pin_memory's copy",
                samples=s,
            )
        )


# Figures m (issue 16): an RL step's record (obs, action, reward, done) in a TensorDB
# beside a one-field TensorBlob row of the same bytes, and a field read beside a raw
# np.memmap of that field alone.
RL_SCHEMA = {
    "obs": (torch.uint8, (3, 84, 84)),
    "action": (torch.int64, ()),
    "reward": (torch.float32, ()),
    "done": (torch.bool, ()),
}
RL_BYTES = 3 * 84 * 84 + 8 + 4 + 1


def rl_records(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return {
        "obs": torch.randint(0, 256, (n, 3, 84, 84), dtype=torch.uint8, generator=g),
        "action": torch.randint(0, 18, (n,), generator=g),
        "reward": torch.randn(n, generator=g),
        "done": torch.rand(n, generator=g) < 0.01,
    }


def records_figures(bench: Bench) -> None:
    """m1: one record per transaction; m2: records in batches; m3: one field over a range."""
    quick = bench.p.rows < 200_000
    n1, n2, batch = (1_000, 4_000, 256) if quick else (4_000, 16_000, 256)
    d = bench.sub("records")
    counter = iter(range(1_000_000))
    src = rl_records(n2)
    flat = torch.cat([src[k].reshape(n2, -1).view(torch.uint8) for k in RL_SCHEMA], dim=1)
    one_recs = [{k: v[i] for k, v in src.items()} for i in range(n1)]
    one_rows = list(flat[:n1].unbind(0))

    def db_run(records: list[dict[str, torch.Tensor]] | None) -> dict[str, float]:
        path = os.path.join(d, f"m{next(counter)}.db")
        db = tensorblob.TensorDB.open(path, "w", schema=RL_SCHEMA)
        try:
            t0 = now()
            if records is not None:
                for rec in records:
                    db.write(rec)
            else:
                for i in range(0, n2, batch):
                    db.write({k: v[i : i + batch] for k, v in src.items()})
            dt = now() - t0
        finally:
            db.close()
        remove(path)
        return {"v": (len(records) if records is not None else n2 * RL_BYTES / 1e9) / dt}

    def blob_run(rows: list[torch.Tensor] | None) -> dict[str, float]:
        path = os.path.join(d, f"m{next(counter)}.blob")
        blob = TensorBlob.open(path, "w", dtype=torch.uint8, shape=(RL_BYTES,))
        try:
            t0 = now()
            if rows is not None:
                for row in rows:
                    blob.write(row)
            else:
                for i in range(0, n2, batch):
                    blob.write(flat[i : i + batch])
            dt = now() - t0
        finally:
            blob.close()
        remove(path)
        return {"v": (len(rows) if rows is not None else n2 * RL_BYTES / 1e9) / dt}

    s1 = interleave(
        bench.p.reps, {"db": lambda: db_run(one_recs), "blob": lambda: blob_run(one_rows)}
    )
    s2 = interleave(bench.p.reps, {"db": lambda: db_run(None), "blob": lambda: blob_run(None)})
    for key, name, unit, s in (
        ("m1", "one RL-step record per write() (TensorDB, 4 fields)", "rows/s", s1),
        ("m2", f"records in batches of {batch} (TensorDB, 4 fields)", "GB/s", s2),
    ):
        bench.add(
            Figure(
                key,
                name,
                unit,
                med(s, "db.v"),
                med(s, "blob.v"),
                "one-field blob",
                "higher",
                1 / 1.3 if key == "m1" else 0.9,
                ">= 1/1.3x one-field blob" if key == "m1" else ">= 0.9x one-field blob",
                note=f"one-field TensorBlob rows of {RL_BYTES} bytes",
                samples=s,
            )
        )
    # m3: one field over a range, beside np.memmap of that field alone. m3a: the
    # 21 KB obs of the n2 RL records; m3b: the 4-byte reward of a database of
    # small records (reward, action, done), n3 of them, so that the range is 4 MB
    # (over 16k RL records it is 64 KB, and one call's fixed cost is the figure).
    n3 = 100_000 if quick else 1_000_000
    small_schema = {k: RL_SCHEMA[k] for k in ("action", "reward", "done")}
    g = torch.Generator().manual_seed(n3)
    small = {
        "action": torch.randint(0, 18, (n3,), generator=g),
        "reward": torch.randn(n3, generator=g),
        "done": torch.rand(n3, generator=g) < 0.01,
    }
    # m3c: the same over 10M records (40 MB), a read larger than malloc ever
    # takes from its heap: its buffer is mapped afresh (see _rows._buffer).
    n4 = 10_000_000
    big = {k: v.repeat(n4 // n3) for k, v in small.items()}
    cases = (
        ("m3a", "obs", src, n2, RL_SCHEMA),
        ("m3b", "reward", small, n3, small_schema),
        ("m3c", "reward", big, n4, small_schema),
    )
    for key, name, data, n, schema in cases:
        path = os.path.join(d, f"{key}.db")
        step = batch if key == "m3a" else 1 << 20 if key == "m3c" else 65_536
        with tensorblob.TensorDB.open(path, "w", schema=schema) as db:
            for i in range(0, n, step):
                db.write({k: v[i : i + step] for k, v in data.items()})
        warm_files(path)
        raw = os.path.join(d, f"{name}.raw")
        data[name].numpy().tofile(raw)
        warm_files(raw)
        dtype, shape = data[name].numpy().dtype, tuple(data[name].shape)
        nbytes = data[name].numel() * data[name].element_size()
        db = tensorblob.TensorDB.open(path, "r")
        col = db.column(name)
        m = np.memmap(raw, dtype=dtype, mode="r", shape=shape)
        # Reads are repeated within a timing (8 MB at least): one read right after
        # the gc.collect() of interleave() would measure a cold CPU cache.
        k = max(1, (8 << 20) // nbytes)

        def tb_read(col: Any = col, nbytes: int = nbytes, k: int = k) -> dict[str, float]:
            t0 = now()
            for _ in range(k):
                col[:]
            return {"v": k * nbytes / (now() - t0) / 1e9}

        def mm_read(m: Any = m, nbytes: int = nbytes, k: int = k) -> dict[str, float]:
            t0 = now()
            for _ in range(k):
                np.array(m)
            return {"v": k * nbytes / (now() - t0) / 1e9}

        s = interleave(max(5, bench.p.fast_reps), {"tb": tb_read, "mm": mm_read})
        db.close()
        del m
        bench.add(
            Figure(
                key,
                f"one field ({name}, {nbytes // n} bytes a row) over {n} records",
                "GB/s",
                med(s, "tb.v"),
                med(s, "mm.v"),
                "np.memmap",
                "higher",
                0.8,
                ">= 0.8x np.memmap of the field",
                memmap=med(s, "mm.v"),
                samples=s,
            )
        )
    remove(d)


def data_figures(bench: Bench) -> None:
    """Figures j (a DataLoader batch: one gather vs per row) and k (window vs full shuffle)."""
    from torch.utils.data import DataLoader  # noqa: PLC0415 - only this step needs them

    from tensorblob.data import DistributedBlobSampler, collate  # noqa: PLC0415

    p = bench.p
    d = bench.sub("data")
    path = os.path.join(d, "j.blob")
    n = p.rows
    build_blob(path, torch.randn(n, DIM), block_size=DATA_BLOCK)
    warm_files(path)
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randint(n, (DATA_BATCH,), generator=gen).tolist() for _ in range(40)]
    blob = TensorBlob.open(path, "r")
    try:
        blob[:]

        def loader(dataset: object, fn: Callable | None) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                t0 = now()
                for _batch in DataLoader(dataset, batch_sampler=batches, collate_fn=fn):
                    pass
                return {"v": (now() - t0) * 1e3 / len(batches)}

            return run

        s = interleave(
            p.fast_reps,
            {
                "tb": loader(blob, collate),
                "dflt": loader(blob, None),
                "each": loader(_PerRow(blob), None),
            },
        )
        bench.add(
            Figure(
                "j",
                f"DataLoader batch of {DATA_BATCH} random rows, num_workers=0",
                "ms/batch",
                med(s, "tb.v"),
                med(s, "each.v"),
                "per row",
                "lower",
                None,
                "info",
                note=f"__getitems__ + default_collate (stacks a copy): {fmt(med(s, 'dflt.v'))} ms",
                samples=s,
            )
        )
    finally:
        blob.close()

    # k: an epoch's first batches in window order and in full-shuffle order, over
    # more blocks than a handle maps, with the page cache warm and dropped.
    nblocks = -(-n // DATA_BLOCK)
    counts = {False: 40, True: 10}  # batches timed, warm and cold

    def epoch(window: int | None, cold: bool) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            if cold:
                _evict(path)
            reader = TensorBlob.open(path, "r", max_cached_blocks=MEM_CACHED)
            try:
                order = DistributedBlobSampler(
                    reader, batch_size=DATA_BATCH, seed=7, window_blocks=window
                )
                it = iter(order)
                t0 = now()
                for _ in range(counts[cold]):
                    reader[next(it)]
                return {"v": counts[cold] * DATA_BATCH / (now() - t0)}
            finally:
                reader.close()

        return run

    try:
        for key, cold in (("k1", False), ("k2", True)):
            s = interleave(p.reps, {"tb": epoch(DATA_WINDOW, cold), "full": epoch(None, cold)})
            what = f"{counts[cold]} batches, page cache " + ("dropped" if cold else "warm")
            bench.add(
                Figure(
                    key,
                    f"window_blocks={DATA_WINDOW} vs full shuffle: {what}",
                    "rows/s",
                    med(s, "tb.v"),
                    med(s, "full.v"),
                    "full shuffle",
                    "higher",
                    None,
                    "info",
                    note=f"{nblocks} blocks of {DATA_BLOCK} rows, max_cached_blocks={MEM_CACHED}",
                    samples=s,
                )
            )
    finally:
        remove(d)


# -- main ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about a one-minute run")
    ap.add_argument("--rows", type=int, help="rows of the read/write blobs (default 200k)")
    ap.add_argument(
        "--reps", type=int, help="repetitions per implementation (3x this for the cheap figures)"
    )
    ap.add_argument("--dir", help="where to create the scratch directory (default: /tmp)")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument(
        "--threads", type=int, help="torch.set_num_threads(N) first (default: torch's choice)"
    )
    ap.add_argument(
        "--only",
        help="comma-separated subset of: reads,write,single,full,sessions,open,memory,data,"
        "startup; with --peers: power,process,open,session,bulk,row,gather,scan",
    )
    ap.add_argument(
        "--peers",
        nargs="?",
        const="all",
        metavar="LIST",
        help="instead of the figures, run the same workloads on tensorblob and its peers "
        "(all, or a comma-separated subset of: tensorblob-0.3.0,np.memmap,h5py,zarr,lmdb,"
        "sqlite); medians of 3, one process per measurement; see scripts/bench_peers.py",
    )
    ap.add_argument(
        "--peer-cache",
        metavar="DIR",
        help="with --peers: where tensorblob 0.3.0 is installed on demand "
        "(default: ~/.cache/tensorblob-bench)",
    )
    ap.add_argument(
        "--no-install",
        action="store_true",
        help="with --peers: never run pip; skip tensorblob 0.3.0 if it is not cached",
    )
    return ap


def run_peers(args: argparse.Namespace) -> int:
    """``--peers``: the comparison with other stores, in scripts/bench_peers.py."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    bench_peers = importlib.import_module("bench_peers")

    base = os.path.abspath(args.dir or tempfile.gettempdir())
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tensorblob-peers-", dir=base)
    try:
        return bench_peers.run(args, machine_facts(work), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.peers is not None:
        return run_peers(args)
    p = params_for(args.quick, args.rows)
    if args.reps:
        p.reps, p.fast_reps = args.reps, 3 * args.reps
    if args.threads:
        torch.set_num_threads(args.threads)
    base = os.path.abspath(args.dir or tempfile.gettempdir())
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tensorblob-bench-", dir=base)
    facts = machine_facts(work)
    started = time.time()
    print("tensorblob benchmark" + (" (--quick)" if args.quick else ""))
    print("command: " + " ".join(["python", *sys.argv]))
    for k, v in facts.items():
        print(f"  {k:<11} {v}")
    print(
        f"  {'params':<11} rows={p.rows} x {DIM} float32, reps={p.reps} (d, e, g, i) and "
        f"{p.fast_reps} (a, b, c, f, h), interleaved; medians"
    )
    bench = Bench(work, p)
    steps = {
        "reads": bench.reads,
        "write": bench.seq_write,
        "single": bench.single_writes,
        "full": bench.full_commit,
        "sessions": bench.sessions,
        "open": bench.opens,
        "memory": bench.memory,
        "data": lambda: data_figures(bench),
        "startup": lambda: startup_figures(bench),
        "records": lambda: records_figures(bench),
        "out": lambda: out_figures(bench),
    }
    chosen = [name for name in steps if not args.only or name in args.only.split(",")]
    try:
        for name in chosen:
            t0 = now()
            print(f"[{name}]", flush=True)
            steps[name]()
            print(f"  ({now() - t0:.1f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - started
    print()
    print(table(bench.figures))
    misses = [f.key for f in bench.figures if f.result == "MISS"]
    print(
        f"\n{len(misses)} miss(es){': ' + ', '.join(misses) if misses else ''}; "
        f"{elapsed:.0f} s; load average at the end {loadavg()}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": facts,
                    "params": asdict(p),
                    "elapsed_s": elapsed,
                    "figures": [
                        {**asdict(fig), "ratio": fig.ratio, "result": fig.result}
                        for fig in bench.figures
                    ],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
