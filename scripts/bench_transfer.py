#!/usr/bin/env python
"""Measure export/import throughput and memory, and a follower's wake-up latency and idle CPU.

Usage::

    python scripts/bench_transfer.py                 # 200k rows of 768 float32 (614 MB)
    python scripts/bench_transfer.py --rows 20000    # a quick run

Throughput: each export and import runs in a fresh child process, ``--reps``
times, with a warm page cache (the input was just written) and after an
``os.sync()`` (no earlier writeback in flight); the time includes the final
fsyncs. The report gives the median seconds, MB/s of every run, and the
children's peak anonymous memory (``RssAnon`` sampled every 5 ms: file pages
mapped from the blob or the input are not counted, since the kernel can drop
them at will). Latency: a writer process commits single rows, each holding
``time.monotonic_ns()`` taken just before its ``write``; a follower in this
process records when it receives each. Idle CPU: ``RUSAGE_THREAD`` over a 2 s
``wait_for`` that times out. The exit code is 0: this is a report, not a test.
Everything lives in one fresh directory, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import torch

import tensorblob
from tensorblob import TensorBlob, WaitTimeoutError


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _measured(kind: str, src: str, dst: str, out: Any) -> None:
    peak = [_rss_anon()]
    base = peak[0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    if kind == "export":
        tensorblob.export_blob(src, dst)
    else:
        tensorblob.import_blob(src, dst)
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    out.put({"seconds": seconds, "anon_peak_mb": (peak[0] - base) / 1e6})


def run_child(kind: str, src: str, dst: str) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measured, args=(kind, src, dst, q))
    p.start()
    result = q.get(timeout=600)
    p.join()
    return result


def write_original(path: str, rows: int, width: int, block: int = 8192) -> None:
    """An original tensorblob 0.3 blob of float32 rows (random bytes), by hand."""
    os.mkdir(path)
    names = []
    g = torch.Generator().manual_seed(1)
    for _ in range(0, rows, block):
        names.append(str(uuid.uuid4()))
        data = torch.randn(block, width, generator=g)
        data.numpy().tofile(os.path.join(path, names[-1]))
    with open(os.path.join(path, ".conf"), "w") as f:
        json.dump({"dtype": "float32", "shape": [width], "block_size": block}, f)
    with open(os.path.join(path, ".stat"), "w") as f:
        json.dump({"len": rows, "bds": names}, f)


def _stamper(path: str, n: int, gap: float, ready: Any) -> None:
    with TensorBlob.open(path, "a") as blob:
        ready.set()
        for _ in range(n):
            time.sleep(gap)
            blob.write(torch.tensor(time.monotonic_ns()))


def follow_latency(d: str, n: int) -> dict[str, float]:
    path = os.path.join(d, "live.blob")
    TensorBlob.open(path, "w", dtype="int64", shape=()).close()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_stamper, args=(path, n, 0.01, ready))
    p.start()
    lags = []
    with TensorBlob.open(path) as reader:
        ready.wait(60)
        for row in reader.follow(timeout=60):
            lags.append((time.monotonic_ns() - int(row)) / 1e3)
        p.join()
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        t0 = time.monotonic()
        with contextlib.suppress(WaitTimeoutError):
            reader.wait_for(n + 1, timeout=2.0)
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    lags.sort()
    return {
        "commits": len(lags),
        "median_us": statistics.median(lags),
        "p90_us": lags[int(0.9 * len(lags))],
        "max_us": lags[-1],
        "idle_cpu_percent": 100 * cpu / wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3, help="runs of each step (median reported)")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-transfer-", dir=args.dir)
    try:
        mb = args.rows * args.width * 4 / 1e6
        blob = os.path.join(d, "src.blob")
        with TensorBlob.open(blob, "w", dtype="float32", shape=args.width) as b:
            g = torch.Generator().manual_seed(0)
            for start in range(0, args.rows, 8192):
                b.write(torch.randn(min(8192, args.rows - start), args.width, generator=g))
        write_original(os.path.join(d, "orig.blob"), args.rows, args.width)
        print(f"{args.rows} rows of {args.width} float32 = {mb:.0f} MB; page cache warm")
        steps = [
            ("export", blob, os.path.join(d, "x.npy")),
            ("export", blob, os.path.join(d, "x.safetensors")),
            ("import", os.path.join(d, "x.npy"), os.path.join(d, "from-npy.blob")),
            ("import", os.path.join(d, "x.safetensors"), os.path.join(d, "from-st.blob")),
            ("import", os.path.join(d, "orig.blob"), os.path.join(d, "from-orig.blob")),
        ]
        for kind, src, dst in steps:
            runs = []
            for _ in range(args.reps):
                if os.path.isdir(dst):
                    TensorBlob.unlink(dst)
                elif os.path.exists(dst):
                    os.unlink(dst)
                os.sync()  # no writeback of earlier steps competes with this one's fsyncs
                runs.append(run_child(kind, src, dst))
            secs = sorted(r["seconds"] for r in runs)
            anon = max(r["anon_peak_mb"] for r in runs)
            what = f"{kind} {os.path.basename(src)} -> {os.path.basename(dst)}"
            print(
                f"  {what:<40} median {statistics.median(secs):5.2f} s "
                f"{mb / statistics.median(secs):6.0f} MB/s (runs: "
                + ", ".join(f"{mb / x:.0f}" for x in secs)
                + f" MB/s)  peak anonymous memory +{anon:.0f} MB"
            )
        lat = follow_latency(d, args.commits)
        print(
            f"follow: {lat['commits']} commits from another process, wake-up after the write "
            f"started: median {lat['median_us']:.0f} us, p90 {lat['p90_us']:.0f} us, "
            f"max {lat['max_us']:.0f} us"
        )
        print(f"idle wait_for: {lat['idle_cpu_percent']:.3f}% of a core over 2 s")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
