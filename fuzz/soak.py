"""A kill -9 soak: writers take turns through the lock, get killed at random; readers verify.

Every row encodes ``[writer, txn, index, count, check]``: the writer
process's id, its transaction number, the row's index inside that
transaction, the transaction's row count and a check value computed from the
other four. A writer opens the blob (``a``, ``a+`` or ``r+``, either sync
level), commits a few transactions (appends, sometimes split over two
writes; truncations of the last transaction; replacements of it), sometimes
flushes, closes, and starts over; other writers wait on the lock meanwhile.
Before a truncation it logs its intent, after every commit it logs the
acknowledgement (``A``/``T`` lines, one file per writer).

The parent SIGKILLs a random writer at a random instant and starts a new
one, again and again, until the time is up; readers (also killed now and
then) keep opening or refreshing snapshots and check them: every row's
check value, and every transaction whole (indexes 0..count-1, contiguous)
and present at most once (G1). At the end the blob is recovered and checked
again, and every acknowledged transaction must be there unless an
acknowledged or in-flight truncation removed it, and no acknowledged
truncation may be undone (G2). Every writer's seed is printed.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import time
import traceback
from typing import Any

import core
import torch

from tensorblob import TensorBlob

ROW = 5
DTYPE = torch.float64


def check_value(w: int, t: int, i: int, k: int) -> float:
    return float((w * 1_000_003 + t * 7919 + i * 31 + k) % 1_000_000_007)


def txn_rows(w: int, t: int, k: int) -> torch.Tensor:
    return torch.tensor([[w, t, i, k, check_value(w, t, i, k)] for i in range(k)], dtype=DTYPE)


def verify(data: torch.Tensor) -> tuple[set[tuple[int, int]], list[str]]:
    """The transactions in a snapshot, and what is wrong with it (torn, garbled, repeated)."""
    rows = data.tolist()
    seen: set[tuple[int, int]] = set()
    problems: list[str] = []
    p = 0
    while p < len(rows):
        w, t, i, k, c = (int(x) if float(x).is_integer() else -1 for x in rows[p])
        if c != check_value(w, t, i, k) or k < 1:
            problems.append(f"row {p}: garbled {rows[p]}")
            p += 1
            continue
        if i != 0:
            problems.append(f"row {p}: transaction ({w},{t}) starts at index {i}")
        run = rows[p : p + k - i]
        want = [[w, t, j, k, check_value(w, t, j, k)] for j in range(i, k)]
        if run != want:
            problems.append(f"rows {p}..{p + k - i - 1}: transaction ({w},{t}) is not whole")
        if (w, t) in seen:
            problems.append(f"transaction ({w},{t}) appears twice")
        seen.add((w, t))
        p += max(1, k - i)
    return seen, problems


def writer_main(path: str, wid: int, seed: int, log_path: str) -> None:
    torch.set_num_threads(1)
    rng = random.Random(seed)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    tid = 0
    try:
        while True:
            mode = rng.choice(["a", "a+", "r+"])
            with TensorBlob.open(path, mode, sync=rng.choice(["normal", "full"]), timeout=120) as b:
                for _ in range(rng.randint(1, 6)):
                    r = rng.random()
                    n = len(b)
                    if r < 0.15 and n:
                        if mode == "a":
                            continue
                        w, t, i, _k, _c = (int(x) for x in b[n - 1].tolist())
                        os.write(log, f"t {w} {t}\n".encode())
                        if r < 0.08:
                            b.truncate(n - 1 - i)
                        else:  # replace the last transaction by a new one, atomically
                            tid += 1
                            k = rng.randint(1, 9)
                            with b.transaction():
                                b.truncate(n - 1 - i)
                                b.seek(0, 2)
                                b.write(txn_rows(wid, tid, k))
                            os.write(log, f"A {wid} {tid}\n".encode())
                        os.write(log, f"T {w} {t}\n".encode())
                    else:
                        tid += 1
                        k = rng.randint(1, 9)
                        rows = txn_rows(wid, tid, k)
                        cut = rng.randint(0, k)
                        with b.transaction():
                            b.seek(0, 2)
                            b.write(rows[:cut])
                            b.write(rows[cut:])
                        os.write(log, f"A {wid} {tid}\n".encode())
                    if rng.random() < 0.2:
                        b.flush()
            time.sleep(rng.random() * 0.01)
    except BaseException:
        os.write(log, b"E " + traceback.format_exc().replace("\n", " | ").encode() + b"\n")
        os._exit(3)


def reader_main(path: str, seed: int, report_path: str) -> None:
    torch.set_num_threads(1)
    rng = random.Random(seed)
    rep = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    checks = 0
    blob: TensorBlob | None = None
    while True:
        try:
            if blob is None or rng.random() < 0.5:
                if blob is not None:
                    blob.close()
                blob = TensorBlob.open(path, "r")
            else:
                blob.refresh()
            _, problems = verify(blob[:])
        except Exception as exc:
            tb = traceback.format_exc().replace("\n", " | ")
            os.write(rep, f"E {exc!r} {tb}\n".encode())
            blob = None
            continue
        checks += 1
        for p in problems:
            os.write(rep, f"P {p}\n".encode())
        os.write(rep, f"C {checks}\n".encode())
        time.sleep(rng.random() * 0.01)


def _read_logs(logs: str) -> dict[str, Any]:
    acked: set[tuple[int, int]] = set()
    truncated: set[tuple[int, int]] = set()
    intents: set[tuple[int, int]] = set()
    errors: list[str] = []
    for name in sorted(os.listdir(logs)):
        with open(os.path.join(logs, name)) as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "E":
                    errors.append(f"{name}: {line[2:].strip()}")
                elif len(parts) == 3:
                    key = (int(parts[1]), int(parts[2]))
                    {"A": acked, "T": truncated, "t": intents}[parts[0]].add(key)
    return {"acked": acked, "truncated": truncated, "intents": intents, "errors": errors}


def run(seconds: float, seed: int, *, writers: int = 3, readers: int = 2) -> core.Tally:
    """Kill writers at random for ``seconds``; return the tally (kills count as crash states)."""
    part = "soak"
    tally = core.Tally()
    ctx = core.context()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="fuzz-soak-") as scratch:
        path = os.path.join(scratch, "blob")
        logs = os.path.join(scratch, "logs")
        reports = os.path.join(scratch, "reports")
        os.makedirs(logs)
        os.makedirs(reports)
        TensorBlob.open(path, "w", dtype=DTYPE, shape=ROW, block_size=4).close()
        seeds: dict[int, int] = {}
        live: dict[int, Any] = {}
        next_wid = 0

        def start_writer() -> None:
            nonlocal next_wid
            next_wid += 1
            seeds[next_wid] = rng.randrange(1 << 32)
            p = ctx.Process(
                target=writer_main,
                args=(path, next_wid, seeds[next_wid], os.path.join(logs, f"w{next_wid}")),
                daemon=True,
            )
            p.start()
            live[next_wid] = p

        def start_reader(i: int) -> Any:
            p = ctx.Process(
                target=reader_main,
                args=(path, rng.randrange(1 << 32), os.path.join(reports, f"r{i}")),
                daemon=True,
            )
            p.start()
            return p

        kills = 0
        reader_procs = [start_reader(i) for i in range(readers)]
        end = time.monotonic() + seconds
        try:
            for _ in range(writers):
                start_writer()
            while time.monotonic() < end:
                time.sleep(rng.uniform(0.02, 0.5))
                for wid, p in list(live.items()):
                    if not p.is_alive():  # a writer that died by itself failed
                        live.pop(wid)
                        start_writer()
                wid = rng.choice(sorted(live))
                p = live.pop(wid)
                os.kill(p.pid, signal.SIGKILL)
                p.join()
                kills += 1
                tally.count(part)
                start_writer()
                if rng.random() < 0.15:
                    i = rng.randrange(readers)
                    os.kill(reader_procs[i].pid, signal.SIGKILL)
                    reader_procs[i].join()
                    reader_procs[i] = start_reader(i)
        finally:
            for p in [*live.values(), *reader_procs]:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGKILL)
                p.join()
        logs_seen = _read_logs(logs)
        checks = 0
        for name in sorted(os.listdir(reports)):
            with open(os.path.join(reports, name)) as f:
                for line in f:
                    if line.startswith("C "):
                        checks += 1
                    elif line.startswith("P "):
                        tally.violations.append(
                            core.Violation(
                                "G1", "soak/reader", "soak", "live", line[2:].strip(), seed=seed
                            )
                        )
                    elif line.startswith("E "):
                        tally.violations.append(
                            core.Violation(
                                "G4",
                                "soak/reader",
                                "soak",
                                "live",
                                f"reader failed: {line[2:].strip()}",
                                seed=seed,
                            )
                        )
        for err in logs_seen["errors"]:
            tally.violations.append(
                core.Violation(
                    "G4", "soak/writer", "soak", "live", f"writer failed: {err}", seed=seed
                )
            )
        # The last writer was killed too: recover and check everything.
        try:
            with TensorBlob.open(path, "a"):
                pass
            with TensorBlob.open(path, "r") as b:
                present, problems = verify(b[:])
                nrows = len(b)
            store = core.store_problems(path, strict=False)
        except Exception as exc:
            tally.violations.append(
                core.Violation(
                    "G4", "soak/final", "soak", "end", f"recovery failed: {exc!r}", seed=seed
                )
            )
            return tally
        for p in problems:
            tally.violations.append(core.Violation("G1", "soak/final", "soak", "end", p, seed=seed))
        for p in store:
            tally.violations.append(core.Violation("G4", "soak/final", "soak", "end", p, seed=seed))
        removable = logs_seen["truncated"] | logs_seen["intents"]
        for key in sorted(logs_seen["acked"] - present - removable):
            tally.violations.append(
                core.Violation(
                    "G2",
                    "soak/final",
                    "soak",
                    "end",
                    f"acknowledged transaction {key} lost",
                    seed=seed,
                )
            )
        for key in sorted(logs_seen["truncated"] & present):
            tally.violations.append(
                core.Violation(
                    "G2",
                    "soak/final",
                    "soak",
                    "end",
                    f"acknowledged truncation of {key} undone",
                    seed=seed,
                )
            )
        tally.notes.append(
            f"soak seed {seed}: {kills} writer kills, {next_wid} writer processes "
            f"(seeds {', '.join(f'{w}:{s}' for w, s in sorted(seeds.items()))}), "
            f"{checks} reader snapshot checks, "
            f"{len(logs_seen['acked'])} transactions acknowledged, "
            f"{nrows} rows at the end"
        )
    return tally


if __name__ == "__main__":  # pragma: no cover
    import sys

    t = run(
        float(sys.argv[1]) if len(sys.argv) > 1 else 10,
        int(sys.argv[2]) if len(sys.argv) > 2 else 0,
    )
    print(t.summary())
