"""tensorblob in one minute: create, append, get killed mid-transaction, recover.

Run: python scripts/demo.py [--dir DIR]

A collector process appends rows in transactions and is killed with SIGKILL
in the middle of one. Reopening shows every committed row and nothing of the
interrupted transaction; the writable reopen reports what recovery did.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import torch

from tensorblob import TensorBlob

ROW = 8


def rows(n: int, start: int) -> torch.Tensor:
    """Row i holds the value start + i in every column: easy to check."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).expand(n, ROW)


def collector(path: str) -> None:
    """The child: commit three batches, then die halfway through a fourth."""
    with TensorBlob.open(path, "a") as blob:
        for _ in range(3):
            blob.write(rows(100, len(blob)))
            print(f"committed, length {len(blob)}", flush=True)
        with blob.transaction():
            blob.write(rows(5000, len(blob)))
            print("in the middle of a 5000-row transaction", flush=True)
            sys.stdin.readline()  # wait here until the parent kills us
            blob.write(rows(5000, len(blob)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", help="where to put the blob (default: a temporary directory)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        collector(args.child)
        return 0

    workdir = args.dir or tempfile.mkdtemp(prefix="tensorblob-demo-")
    path = os.path.join(workdir, "trajectories.blob")
    shutil.rmtree(path, ignore_errors=True)
    print(f"1. create {path}: float32 rows of shape ({ROW},), blocks of 1024 rows")
    with TensorBlob.open(path, "w", dtype="float32", shape=ROW, block_size=1024) as blob:
        blob.write(rows(1000, 0))
        print(f"   wrote 1000 rows; len = {len(blob)}")

    print("2. reopen in 'a' mode and append 500 more")
    with TensorBlob.open(path, "a") as blob:
        blob.write(rows(500, 1000))
        print(f"   len = {len(blob)}")

    print("3. start a collector process; kill -9 it in the middle of a transaction")
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        print(f"   collector: {line.strip()}")
        if line.startswith("in the middle"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    print(f"   collector exit status {child.returncode} (killed by SIGKILL)")

    print("4. open read-only: no file is changed, the torn transaction is invisible")
    with TensorBlob.open(path, "r") as blob:
        n = len(blob)
        ok = torch.equal(blob[:], rows(n, 0))
        print(f"   len = {n} (1500 + 3 x 100 committed), rows intact: {ok}")

    print("5. open for writing: recovery runs and reports what it did")
    with TensorBlob.open(path, "a") as blob:
        for action in blob.recovery_actions:
            print(f"   recovery: {action}")
        blob.write(rows(200, len(blob)))
        print(f"   appended 200 more; len = {len(blob)}")

    with TensorBlob.open(path, "r") as blob:
        final_ok = len(blob) == 2000 and torch.equal(blob[:], rows(2000, 0))
        print(f"6. final check: len = {len(blob)}, every row as written: {final_ok}")
        print(f"   blob[-1:16:-450][:, 0] = {blob[-1:16:-450][:, 0].tolist()}")
    if not args.dir:
        shutil.rmtree(workdir)
    print("demo OK" if ok and final_ok else "demo FAILED")
    return 0 if ok and final_ok else 1


if __name__ == "__main__":
    sys.exit(main())
