"""Crash-injection harness: workloads as data, a model of them, and a killable child runner.

A workload is a list of ops (JSON-able lists). The same list drives the real
blob (in a child process) and the model (plain torch tensors, in the test
process). ``expected_states`` gives the model state after every
state-changing op; a child that is SIGKILLed at the N-th disk-changing step
of ``tensorblob._durable`` records how many ops were acknowledged, so the
reopened blob must equal the state after the last acknowledged op or the one
in flight, and nothing else.

Ops::

    ["open", mode, sync, {"dtype":..., "shape":..., "block_size":...}]
    ["open", mode, sync, {"schema": SCHEMA, "block_size":...}]  # a TensorDB
    ["write", n, seed]          # n rows with values seed*1000 + i (records: see records())
    ["seek", pos, whence]
    ["truncate", pos]           # pos may be None: at the cursor
    ["extend", other, ordered]  # other: path of a prepared blob
    ["txn", [ops...]]           # one transaction
    ["rollback", [ops...]]      # a transaction whose body raises: it all rolls back
    ["flush"] | ["close"]
    ["unlink"]                  # TensorBlob.unlink(path), with no handle open
    ["checkpoint_every", nbytes]  # lower the journal bound (and ROTATE_BYTES) in the child
    ["log_bound", rows, journal(, close)]  # lower the bounds on rows logged (sync="full")

``WORKLOADS`` is the shared catalogue (tests/test_crash.py and fuzz/ use it).

Records: a workload whose first open creates with a ``schema`` drives a
``TensorDB`` of four fields of different dtypes and row sizes (SCHEMA). Its
model holds each record as its fields' bytes side by side (``pack``), so
that a state is one tensor either way and a mix of two versions of a record
is caught byte for byte. A reopen with ``{}`` opens whatever is there.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tensorblob import TensorBlob, TensorDB, _durability, _durable, _fast
from tensorblob._meta import read_meta

ABSENT = None  # the blob does not exist
ROW_SHAPE = (3,)
DTYPE = torch.float32
MUTATING = {"write", "truncate", "extend", "txn", "rollback", "unlink"}


def rows(n: int, seed: int) -> torch.Tensor:
    base = torch.arange(n * ROW_SHAPE[0], dtype=DTYPE).reshape(n, *ROW_SHAPE)
    return base + seed * 1000


# A record of four fields of different dtypes and row sizes (JSON-able, for op lists).
SCHEMA = {
    "obs": ["uint8", [2, 3]],
    "action": ["int64", []],
    "reward": ["float32", []],
    "done": ["bool", []],
}


def records(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` records for seed ``seed``: every field differs between seeds and rows."""
    i = torch.arange(n, dtype=torch.int64) + seed * 1000
    obs = (i.reshape(n, 1, 1) * 7 + torch.arange(6).reshape(1, 2, 3)) % 251
    return {
        "obs": obs.to(torch.uint8),
        "action": i * 3 + 1,
        "reward": i.to(torch.float32) / 4,
        "done": (i % 3) == 0,
    }


_BYTES = {"obs": (1, [2, 3]), "action": (8, []), "reward": (4, []), "done": (1, [])}


def pack(recs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Records as one uint8 tensor ``(n, bytes of a record)``: the fields' bytes side by side."""
    n = recs["action"].shape[0]
    parts = [
        recs[name].contiguous().view(torch.uint8).reshape(n, math.prod(shape) * (size or 1))
        for name, (size, shape) in _BYTES.items()
    ]
    return torch.cat(parts, dim=1)


def is_db(ops: list[list[Any]]) -> bool:
    """Does the workload drive a TensorDB (its first creating open has a schema)?"""
    return any(op[0] == "open" and "schema" in op[3] for op in ops)


def kind_of(path: str) -> type[TensorBlob] | type[TensorDB]:
    """The class of what is at ``path`` (which exists)."""
    return TensorDB if read_meta(path).db else TensorBlob


# -- the shared workload catalogue ------------------------------------------

B = 4  # rows per block: small, so workloads cross many block boundaries
NEW = {"dtype": "float32", "shape": [3], "block_size": B}
NEW_DB = {"schema": SCHEMA, "block_size": B}


def create(n: int, seed: int = 1, sync: str = "normal") -> list[list[Any]]:
    return [["open", "w", sync, NEW], ["write", n, seed], ["close"]]


WORKLOADS: dict[str, list[list[Any]]] = {
    "append": [
        ["open", "w", "normal", NEW],
        ["write", 3, 1],
        ["write", 6, 2],
        ["write", 1, 3],
        ["write", 1, 4],
        ["close"],
    ],
    "append_sessions": [
        *create(2),
        ["open", "a", "normal", {}],
        ["write", 3, 2],
        ["close"],
        ["open", "a", "normal", {}],
        ["write", 4, 3],
        ["write", 1, 4],
        ["close"],
    ],
    # A session's first commit on the fast path (design.md item 23), in a journal that a
    # checkpoint at close left without an open marker: it must write its own.
    "sessions_after_checkpoint": [
        ["close_checkpoint_every", 1],
        *create(2),
        ["open", "a", "normal", {}],
        ["write", 1, 2],
        ["write", 1, 3],
        ["close"],
        ["open", "a", "normal", {}],
        ["write", 1, 4],
        ["close"],
    ],
    "transaction": [
        *create(5),
        ["open", "r+", "normal", {}],
        ["txn", [["seek", 2, 0], ["write", 4, 2], ["truncate", 7], ["write", 5, 3]]],
        ["txn", [["write", 2, 4], ["seek", 0, 0], ["write", 1, 5]]],
        ["close"],
    ],
    "overwrite": [
        *create(10),
        ["open", "r+", "normal", {}],
        ["seek", 2, 0],
        ["write", 7, 2],
        ["seek", -3, 2],
        ["write", 6, 3],
        ["seek", 0, 0],
        ["write", 1, 4],
        ["close"],
    ],
    "truncate_regrow": [
        *create(10),
        ["open", "r+", "normal", {}],
        ["truncate", 6],
        ["seek", 0, 2],
        ["write", 5, 2],
        ["truncate", 0],
        ["write", 2, 3],
        ["close"],
    ],
    "extend_ordered": [
        *create(5),
        ["open", "a", "normal", {}],
        ["extend", "OTHER", True],
        ["close"],
    ],
    "extend_blocks": [
        *create(5),
        ["open", "a", "normal", {}],
        ["extend", "OTHER", False],
        ["write", 1, 7],
        ["close"],
    ],
    "recreate": [
        *create(6),
        ["open", "w", "normal", {}],
        ["write", 3, 2],
        ["close"],
    ],
    "checkpoint": [
        ["checkpoint_every", 300],
        ["open", "w", "normal", NEW],
        *[["write", 1, i] for i in range(12)],
        ["truncate", 5],
        ["write", 2, 20],
        ["close"],
    ],
    "rotations": [
        # Append-only sessions rotate the journal at its bound (docs/design.md,
        # item 4) until ROTATE_BYTES of rows, then checkpoint; after a durable
        # point they checkpoint; a later session opens over a rotated journal.
        ["checkpoint_every", 200],
        ["open", "w", "normal", NEW],
        *[["write", 1, i] for i in range(22)],
        ["flush"],
        *[["write", 1, 30 + i] for i in range(10)],
        ["close"],
        ["open", "a", "normal", {}],
        *[["write", 2, 50 + i] for i in range(9)],
        ["close"],
        # After an overwrite, the next bound checkpoints too.
        ["open", "r+", "normal", {}],
        ["seek", 0, 2],
        *[["write", 1, 70 + i] for i in range(6)],
        ["seek", 1, 0],
        ["write", 1, 80],
        ["seek", 0, 2],
        *[["write", 1, 90 + i] for i in range(10)],
        ["close"],
    ],
    "unlink": [
        # Whole or gone at every step; then a creation of the same name, which
        # sweeps what an interrupted unlink left (its tombstone).
        *create(5),
        ["unlink"],
        ["open", "w", "normal", NEW],
        ["write", 2, 3],
        ["close"],
    ],
    "full_sync": [
        *create(3, sync="full"),
        ["open", "r+", "full", {}],
        ["seek", 1, 0],
        ["write", 4, 2],
        ["write", 2, 3],
        ["truncate", 4],
        ["close"],
    ],
    # sync="full" commits of a few rows carry them in the journal (F6 ``r``): the
    # blocks are fsynced at the next commit that fills a block, truncates or
    # overwrites, at the log bound, at checkpoints and at close.
    "full_logged": [
        ["log_bound", 40, 600],
        ["open", "w", "full", NEW],
        ["write", 1, 1],
        ["write", 1, 2],
        ["write", 2, 3],
        ["write", 1, 4],
        ["write", 1, 5],
        ["write", 1, 6],
        ["truncate", 5],
        ["write", 1, 7],
        ["write", 1, 8],
        ["close"],
        ["open", "a", "full", {}],
        ["write", 1, 9],
        ["write", 1, 10],
        ["write", 1, 11],
        ["write", 1, 12],
        ["write", 1, 13],
    ],
    # Records (TensorDB): every field must keep the same length, and every row
    # one committed version of all its fields.
    "records_append": [
        ["open", "w", "normal", NEW_DB],
        ["write", 3, 1],
        ["write", 6, 2],
        ["write", 1, 3],
        ["close"],
        ["open", "a", "normal", {}],
        ["write", 2, 4],
        ["flush"],
        ["write", 5, 5],
        ["close"],
    ],
    "records_overwrite": [
        # Overwrites in r+ spanning blocks (copy-on-write of every field), a
        # truncate, a rolled-back transaction and one that commits.
        ["open", "w", "normal", NEW_DB],
        ["write", 10, 1],
        ["close"],
        ["open", "r+", "normal", {}],
        ["seek", 2, 0],
        ["write", 7, 2],
        ["truncate", 7],
        ["rollback", [["seek", 0, 0], ["write", 5, 3], ["truncate", 2]]],
        ["txn", [["seek", 1, 0], ["write", 2, 4], ["seek", 0, 2], ["write", 3, 5]]],
        ["close"],
    ],
    "records_extend": [
        ["open", "w", "normal", NEW_DB],
        ["write", 5, 1],
        ["close"],
        ["open", "a", "normal", {}],
        ["extend", "OTHER", False],
        ["extend", "OTHER", True],
        ["write", 1, 7],
        ["close"],
    ],
    # Sessions of logged rows: close() checkpoints past its bound on logged rows
    # (here 30 bytes: 3 rows), else leaves them and the padding to the next session.
    "full_logged_sessions": [
        ["log_bound", 40, 600, 30],
        ["open", "w", "full", NEW],
        *[["write", 1, i] for i in range(3)],
        ["close"],
        ["open", "a", "full", {}],
        ["write", 1, 3],
        ["close"],
        ["open", "a", "full", {}],
        ["write", 1, 4],
        ["write", 1, 5],
        ["close"],
        ["open", "a", "normal", {}],
        ["write", 1, 6],
        ["close"],
    ],
    "records_logged": [
        ["log_bound", 60, 800],
        ["open", "w", "full", NEW_DB],
        *[["write", 1, i] for i in range(7)],
        ["seek", 2, 0],
        ["write", 1, 20],
        ["write", 1, 21],
    ],
    "records_full_sync": [
        ["open", "w", "full", NEW_DB],
        ["write", 3, 1],
        ["close"],
        ["open", "r+", "full", {}],
        ["seek", 1, 0],
        ["write", 4, 2],
        ["write", 2, 3],
        ["truncate", 4],
        ["close"],
        ["unlink"],
        ["open", "w", "normal", NEW_DB],
        ["write", 2, 6],
        ["close"],
    ],
    "flush_points": [
        ["open", "w", "normal", NEW],
        ["write", 3, 1],
        ["flush"],
        ["write", 3, 2],
        ["seek", 0, 0],
        ["write", 2, 3],
        ["flush"],
        ["write", 5, 4],
        ["close"],
    ],
}

OTHER_ROWS = rows(9, 50)  # 2 full blocks and a partial one
OTHER_RECORDS = records(9, 50)


def make_other(path: str, db: bool, block_size: int = B) -> torch.Tensor:
    """Create the blob (``db``: database) that "extend" ops take rows from; return its model
    state."""
    if db:
        with TensorDB.open(path, "w", schema=_schema(SCHEMA), block_size=block_size) as o:
            o.write(OTHER_RECORDS)
        return pack(OTHER_RECORDS)
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=block_size) as o:
        o.write(OTHER_ROWS)
    return OTHER_ROWS


def _schema(schema: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (dtype, tuple(shape)) for name, (dtype, shape) in schema.items()}


# -- the model -------------------------------------------------------------


@dataclass
class Model:
    data: torch.Tensor | None = None  # None: blob absent
    pos: int = 0
    mode: str = ""
    block_size: int = 0
    others: dict[str, torch.Tensor] = field(default_factory=dict)
    db: bool = False

    def apply(self, op: list[Any]) -> None:
        kind = op[0]
        if kind == "open":
            mode, _sync, extra = op[1], op[2], op[3]
            if self.data is None:
                self.block_size = extra.get("block_size", 8192)
                self.db = "schema" in extra
                self.data = self.new(0, 0)
            if mode[0] == "w":
                self.data = self.data[:0]
            self.mode = mode
            self.pos = len(self.data) if mode[0] == "a" else 0
        elif kind == "write":
            assert self.data is not None
            new = self.new(op[1], op[2])
            at = len(self.data) if self.mode[0] == "a" else self.pos
            end = at + len(new)
            tail = self.data[end:]
            self.data = torch.cat([self.data[:at], new, tail])
            self.pos = end
        elif kind == "seek":
            n = len(self.data)
            base = {0: 0, 1: self.pos, 2: n}[op[2]]
            self.pos = max(0, min(n, base + op[1]))
        elif kind == "truncate":
            cut = self.pos if op[1] is None else op[1]
            if cut < len(self.data):
                self.data = self.data[:cut]
                self.pos = min(self.pos, cut)
        elif kind == "extend":
            other = self.others[op[1]]
            if op[2] or len(other) < self.block_size:
                self.data = torch.cat([self.data, other])
            else:
                b = self.block_size
                sf, of = len(self.data) // b * b, len(other) // b * b
                self.data = torch.cat([self.data[:sf], other[:of], self.data[sf:], other[of:]])
            self.pos = len(self.data)
        elif kind == "txn":
            for sub in op[1]:
                self.apply(sub)
        elif kind == "rollback":
            pass  # the transaction raised inside: data and cursor are as before
        elif kind == "unlink":
            self.data, self.pos = ABSENT, 0
        elif kind in ("flush", "close", *BOUNDS):
            pass
        else:  # pragma: no cover - a typo in a workload
            raise ValueError(op)

    def new(self, n: int, seed: int) -> torch.Tensor:
        return pack(records(n, seed)) if self.db else rows(n, seed)


def expected_states(ops: list[list[Any]], others: dict[str, torch.Tensor]) -> list[Any]:
    """State 0 is before the workload; state i follows the i-th acknowledged op."""
    m = Model(others=others)
    states: list[Any] = [ABSENT]
    for op in ops:
        m.apply(op)
        if op[0] in MUTATING or (op[0] == "open" and op[1][0] in "wa"):
            states.append(ABSENT if m.data is None else m.data.clone())
    return states


# -- the child --------------------------------------------------------------


class Rollback(Exception):
    """Raised inside ``with blob.transaction()`` by the "rollback" op."""


def open_op(path: str, op: list[Any]) -> Any:
    """Do an ``["open", mode, sync, extra]`` op; the caller acknowledges ``w``/``a`` opens."""
    extra = dict(op[3])
    if "shape" in extra:
        extra["shape"] = tuple(extra["shape"])
    if "schema" in extra:
        extra["schema"] = _schema(extra["schema"])
        return TensorDB.open(path, op[1], sync=op[2], **extra)
    if not extra and os.path.exists(path):
        return kind_of(path).open(path, op[1], sync=op[2])
    return TensorBlob.open(path, op[1], sync=op[2], **extra)


def apply_op(blob: Any, op: list[Any]) -> None:
    """Do one data op (write, seek, truncate, extend, txn, rollback) on a real blob."""
    kind = op[0]
    if kind == "write":
        blob.write(records(op[1], op[2]) if isinstance(blob, TensorDB) else rows(op[1], op[2]))
    elif kind == "seek":
        blob.seek(op[1], op[2])
    elif kind == "truncate":
        blob.truncate(op[1])
    elif kind == "extend":
        with type(blob).open(op[1], "r") as other:
            blob.extend(other, maintain_order=op[2])
    elif kind == "txn":
        with blob.transaction():
            for sub in op[1]:
                apply_op(blob, sub)
    elif kind == "rollback":
        with contextlib.suppress(Rollback), blob.transaction():
            for sub in op[1]:
                apply_op(blob, sub)
            raise Rollback
    else:  # pragma: no cover - a typo in a workload
        raise ValueError(op)


BOUNDS = ("checkpoint_every", "log_bound", "close_checkpoint_every")


def set_bound(op: list[Any]) -> None:
    """Lower a bound of the engine in this (child) process, so that a short workload
    reaches it: ``checkpoint_every`` the journal's (and ROTATE_BYTES), ``log_bound``
    the bytes of rows logged in the journal (F6 ``r``) before the blocks are fsynced
    and before the journal is checkpointed (and, given a third value, at close),
    ``close_checkpoint_every`` the records past
    which close() checkpoints."""
    if op[0] == "checkpoint_every":
        _durability.CHECKPOINT_BYTES = op[1]
        _durability.ROTATE_BYTES = op[1]  # rotations, then a checkpoint, in one session
    elif op[0] == "close_checkpoint_every":
        _durability.CLOSE_CHECKPOINT_RECORDS = op[1]
    else:
        _fast.LOG_BUDGET, _durability.LOGGED_JOURNAL_BYTES = op[1], op[2]
        if len(op) > 3:
            _durability.CLOSE_CHECKPOINT_LOGGED = op[3]


def _run_ops(path: str, ops: list[list[Any]], ack_fd: int) -> None:

    blob = None
    acks = 0

    def ack() -> None:
        nonlocal acks
        acks += 1
        os.write(ack_fd, b"%d\n" % acks)

    def do(op: list[Any]) -> None:
        if op[0] == "flush":
            blob.flush()
            os.write(ack_fd, b"D%d\n" % acks)
        else:
            apply_op(blob, op)

    for op in ops:
        kind = op[0]
        if kind == "open":
            blob = open_op(path, op)
            if op[1][0] in "wa":
                ack()
        elif kind == "close":
            blob.close()
            os.write(ack_fd, b"D%d\n" % acks)  # a durable point: all acks so far survive power loss
        elif kind == "unlink":
            kind_of(path).unlink(path)
            ack()
            os.write(ack_fd, b"D%d\n" % acks)  # durable when it returns
        elif kind in BOUNDS:
            set_bound(op)
        else:
            do(op)
            if kind in MUTATING:
                ack()
    if blob is not None:
        blob.close()


def child_main(
    path: str, ops: list[list[Any]], crash_at: int, ack_path: str, log_path: str
) -> None:
    """Run ``ops``; SIGKILL ourselves just before disk step ``crash_at`` (1-based; 0: never)."""

    torch.set_num_threads(1)
    ack_fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    count = 0

    def hook(step: str, p: str, extent: tuple[int, int] | None) -> None:
        nonlocal count
        count += 1
        if count == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        info = ""
        if extent is not None:
            info = f"{extent[0]},{extent[1]}"
        elif step == "fdatasync":
            info = str(os.path.getsize(p))  # what this fdatasync will make durable
        elif step == "rename" and os.path.exists(p + ".tmp"):
            info = str(os.path.getsize(p + ".tmp"))  # fsynced before the rename
        os.write(log_fd, f"{count}\t{step}\t{p}\t{info}\n".encode())

    _durable.set_fault_hook(hook)
    _run_ops(path, ops, ack_fd)
    os._exit(0)


_ctx: Any = None


def _context() -> Any:
    global _ctx  # noqa: PLW0603 - one fork server per session: torch is imported once
    if _ctx is None:
        _ctx = multiprocessing.get_context("forkserver")
        _ctx.set_forkserver_preload(["torch", "tensorblob", "harness"])
    return _ctx


@dataclass
class Run:
    exitcode: int
    acks: int  # state-changing ops that returned
    durable: int  # acks at the last flush()/close() that returned
    log: list[tuple[str, str, str]]  # steps completed before the crash: (step, path, info)


def run_child(path: str, ops: list[list[Any]], crash_at: int, workdir: str) -> Run:
    ack_path = os.path.join(workdir, "acks")
    log_path = os.path.join(workdir, "steps")
    for p in (ack_path, log_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    proc = _context().Process(target=child_main, args=(path, ops, crash_at, ack_path, log_path))
    proc.start()
    proc.join(120)
    if proc.exitcode is None:  # pragma: no cover - a hang is a failure
        proc.kill()
        raise AssertionError(f"child hung at crash point {crash_at}")
    acks = durable = 0
    if os.path.exists(ack_path):
        with open(ack_path) as f:
            for line in f.read().split():
                if line.startswith("D"):
                    durable = int(line[1:])
                else:
                    acks = int(line)
    log: list[tuple[str, str, str]] = []  # steps completed before the crash
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                _, step, p, info = line.rstrip("\n").split("\t")
                log.append((step, p, info))
    return Run(proc.exitcode, acks, durable, log)


# -- checks -----------------------------------------------------------------


def snapshot_files(root: str) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (f.read(), st.st_mtime_ns)
    return out


def read_all(path: str) -> torch.Tensor | None:
    """Every row at ``path`` (records packed, see ``pack``), or ABSENT."""
    if not os.path.exists(path):
        return ABSENT
    with kind_of(path).open(path, "r") as b:
        got = b[:]
    return pack(got) if isinstance(got, dict) else got


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a, b)


def describe(x: Any) -> str:
    return "absent" if x is None else f"{len(x)} rows"


@contextlib.contextmanager
def fake_boot(boot: str) -> Iterator[None]:
    """Make this process believe the machine rebooted (a different kernel boot id)."""

    real = _durable.boot_id
    _durable.boot_id = lambda: boot
    try:
        yield
    finally:
        _durable.boot_id = real


def drop_unsynced(log: list[tuple[str, str, str]], root: str, *, keep_journal: bool) -> list[str]:
    """Simulate a power cut at the crash: undo what the step log shows was never made durable.

    Journal bytes past the size it had at its last fdatasync (or at the rename
    that installed it, after an fsync) are cut off, unless ``keep_journal``:
    then they are kept, as when the kernel wrote the journal's pages back but
    not the blocks' (the trap of docs/design.md, "power loss"); block byte ranges written
    since their file's last fsync, and files created or copied since then,
    become garbage. Renames and creations are kept (a coarser model than
    fuzz/'s). Returns what was done.
    """
    done: list[str] = []
    journal = os.path.join(root, "journal")
    durable_size: int | None = None
    dirty: dict[str, list[tuple[int, int]] | None] = {}  # None: the whole file
    pending: list[tuple[int, int]] = []  # frames written in place over the journal's padding
    for step, p, info in log:
        if p == journal and step in ("fdatasync", "rename"):
            durable_size = int(info)
            pending = []
        elif p == journal and step == "overwrite":
            off, n = map(int, info.split(","))
            pending.append((off, n))
        elif "/blocks/" in p:
            if step == "write_rows":
                off, n = map(int, info.split(","))
                if dirty.get(p, []) is not None:
                    dirty.setdefault(p, []).append((off, n))
            elif step in ("create", "copy", "ftruncate"):
                dirty[p] = None
            elif step == "fsync":
                dirty.pop(p, None)
    if not keep_journal and durable_size is not None and os.path.exists(journal):
        cur = os.path.getsize(journal)
        if cur > durable_size:
            os.truncate(journal, durable_size)
            done.append(f"journal cut {cur} -> {durable_size}")
        with open(journal, "r+b") as f:
            for off, n in pending:  # the padding they overwrote comes back
                f.seek(off)
                f.write(bytes(max(0, min(n, durable_size - off))))
                done.append(f"journal zeroed {off}+{n}")
    g = torch.Generator().manual_seed(7)
    for p, extents in sorted(dirty.items(), key=lambda kv: kv[0]):
        if not os.path.exists(p):
            continue
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            for off, n in extents if extents is not None else [(0, size)]:
                junk = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
                f.seek(off)
                f.write(junk.numpy().tobytes())
        done.append(f"garbled {os.path.basename(p)}")
    return done


def exercise(path: str) -> None:
    """A recovered blob must keep working: append, reopen, read back."""

    cls = kind_of(path)
    new = records(2, 99) if cls is TensorDB else rows(2, 99)
    with cls.open(path, "a") as b:
        n = len(b)
        b.write(new)
    with cls.open(path, "r") as b:
        assert len(b) == n + 2
        got = b[n:]
    if cls is TensorDB:
        got, new = pack(got), pack(new)
    assert torch.equal(got, new)
