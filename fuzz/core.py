"""The fuzz campaign's machinery: traced child runs, crash images, the checks, the tally.

How a crash state is produced. A workload (an op list, see tests/harness.py)
runs in a real child process forked for it, on real files. The child
installs the fault hook of ``tensorblob._durable`` (the seam every
disk-changing step goes through). Before each step the hook records the
step (name, path, extent, the source of a rename) together with a copy of
every file and directory of the child's world directory: exactly what a
SIGKILL at that instant would leave behind, because a killed process
changes no file (rows written through the shared mapping are in the page
cache, which every process reads). One run of a workload therefore yields
the crash image before every one of its steps, plus the image after a
normal exit. ``verify_sigkill`` checks that equivalence against a child that
really SIGKILLs itself at step N (harness.run_child's way).

Each crash image is then examined in a fresh directory (``examine``): a
read-only open (which must change no byte and no mtime), a writable open
(recovery), a second look, a clean store, and an append after recovery. The
state found is compared with the model of the workload (harness.Model):
the states after the last acknowledged op or the one in flight are allowed,
and for power-loss images (fuzz/powerloss.py) everything back to the last
durable point.

Violations are counted per guarantee of the contract (shared DESIGN.md):

- G1 atomicity: the state found is none of the allowed model states (a torn
  transaction, rows of an uncommitted one, a half-made blob);
- G2 durability: the state found is an older model state than the last
  acknowledged (process death) or last durable (power loss) one;
- G4 recovery: an open fails, a read-only open changed a file, recovery
  changed the state a reader saw, recovery is not idempotent, an orphan or
  leaked block or temporary file is left after recovery, or the blob no
  longer works after recovery.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import secrets
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, os.path.join(ROOT, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import harness  # noqa: E402
import torch  # noqa: E402

from tensorblob import TensorBlob, _durable  # noqa: E402
from tensorblob._blockfiles import parse_block_name  # noqa: E402
from tensorblob._meta import read_meta  # noqa: E402
from tensorblob._snapshot import load  # noqa: E402

GUARANTEES = ("G1", "G2", "G4")
CREATE = {"dtype": "float32", "shape": (3,), "block_size": 4}  # harness's row layout
BLOB = "blob"  # the blob's name inside a world directory
Snap = tuple[tuple[str, ...], dict[str, bytes]]  # (directories, {file: bytes}), world-relative


# -- the tally ----------------------------------------------------------------


@dataclass
class Violation:
    # G1, G2, G4; RUN: a workload failed in a run without any crash (the engine raised);
    # ERR: the campaign itself failed; MUT: a mutation the campaign did not catch.
    guarantee: str
    check: str  # which campaign part and check found it
    workload: str
    step: str  # the crash point, e.g. "17/42 write_rows blob/blocks/0000000000000001"
    detail: str
    variant: str = ""  # power-loss variant, recovery phase, ...
    seed: int | None = None
    ops: list[Any] | None = None

    def reproducer(self) -> str:
        parts = [f"workload={self.workload}", f"crash={self.step}"]
        if self.variant:
            parts.append(f"variant={self.variant}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        if self.ops is not None:
            parts.append(f"ops={json.dumps(self.ops)}")
        return " ".join(parts)


@dataclass
class Tally:
    crash_points: int = 0  # crash states examined (workload x crash step x variant)
    images: int = 0  # of which distinct disk images (the rest were byte-identical repeats)
    by_part: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # parts cut short by the budget

    def count(self, part: str, n: int = 1) -> None:
        self.crash_points += n
        self.by_part[part] = self.by_part.get(part, 0) + n

    def merge(self, other: Tally) -> None:
        self.crash_points += other.crash_points
        self.images += other.images
        for k, v in other.by_part.items():
            self.by_part[k] = self.by_part.get(k, 0) + v
        self.violations += other.violations
        self.notes += other.notes
        self.incomplete += other.incomplete

    def per_guarantee(self) -> dict[str, int]:
        out = dict.fromkeys(GUARANTEES, 0)
        for v in self.violations:
            out[v.guarantee] = out.get(v.guarantee, 0) + 1
        return out

    def summary(self) -> str:
        lines = [
            f"crash states explored: {self.crash_points} "
            f"({self.images} distinct disk images examined)"
        ]
        for part, n in sorted(self.by_part.items()):
            lines.append(f"  {part}: {n}")
        per = self.per_guarantee()
        lines.append(
            "violations: "
            + ", ".join(f"{g} {n}" for g, n in per.items())
            + f" (total {sum(per.values())})"
        )
        groups: dict[tuple[str, str], list[Violation]] = {}
        for v in self.violations:  # one line per cause: same guarantee, same finding
            groups.setdefault((v.guarantee, v.detail[:70]), []).append(v)
        for (g, _), vs in groups.items():
            v = vs[0]
            more = f" ({len(vs)} crash states, e.g.)" if len(vs) > 1 else ""
            lines.append(f"  [{g}] {v.check}: {v.detail}{more}")
            lines.append(f"      reproducer: {v.reproducer()}")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.extend(f"cut short by the budget: {n}" for n in self.incomplete)
        return "\n".join(lines)


# -- worlds, snapshots, images ------------------------------------------------

# Crash images are examined on tmpfs when there is one: what an examination
# finds does not depend on durability (nothing crashes during it), and it
# saves the fsyncs and slow unlinks of the disk. The traced writer itself
# runs on the scratch directory's (disk) filesystem. FUZZ_CHECK_DIR=disk
# examines on the disk too.
_SHM = "/dev/shm"
FAST_ROOT = (
    None
    if os.environ.get("FUZZ_CHECK_DIR") == "disk" or not os.access(_SHM, os.W_OK)
    else os.environ.get("FUZZ_CHECK_DIR", _SHM)
)


def fast(scratch: str, name: str) -> str:
    """A directory for examining images of the task working in ``scratch``."""
    if FAST_ROOT is None:
        return os.path.join(scratch, name)
    return os.path.join(FAST_ROOT, "tbfuzz-" + os.path.basename(scratch.rstrip("/")), name)


def cleanup(scratch: str) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    if FAST_ROOT is not None:
        shutil.rmtree(os.path.dirname(fast(scratch, "x")), ignore_errors=True)


def snapshot(world: str) -> Snap:
    """Every directory and file under ``world`` (bytes), world-relative."""
    dirs: list[str] = []
    files: dict[str, bytes] = {}
    for dirpath, _dirnames, filenames in os.walk(world):
        rel = os.path.relpath(dirpath, world)
        if rel != ".":
            dirs.append(rel)
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                files[os.path.normpath(os.path.join(rel, name))] = f.read()
    return tuple(sorted(dirs)), files


def materialize(snap: Snap, world: str) -> None:
    """Make ``world`` hold exactly ``snap`` (a fresh directory tree)."""
    shutil.rmtree(world, ignore_errors=True)
    os.makedirs(world)
    dirs, files = snap
    for d in dirs:
        os.makedirs(os.path.join(world, d), exist_ok=True)
    for rel, data in files.items():
        with open(os.path.join(world, rel), "wb") as f:
            f.write(data)


def _lock_file(rel: str) -> bool:
    """``rel`` is the lock file of the blob, or of its hidden build or tombstone directory:
    its contents (the owner's pid) are informational and differ from run to run."""
    d = os.path.dirname(rel)
    return os.path.basename(rel) == "lock" and (d == BLOB or d.startswith(f".{BLOB}."))


def image_key(snap: Snap, *extra: Any) -> bytes:
    """A digest of a crash image (the lock files' informational contents excluded)."""
    h = hashlib.blake2b(digest_size=16)
    dirs, files = snap
    h.update(repr(dirs).encode())
    for rel in sorted(files):
        h.update(rel.encode() + b"\0")
        if not _lock_file(rel):
            h.update(files[rel])
        h.update(b"\1")
    h.update(repr(extra).encode())
    return h.digest()


# -- workloads ----------------------------------------------------------------


def other_rows() -> torch.Tensor:
    return harness.OTHER_ROWS


def prepare(
    ops: list[list[Any]], scratch: str, block_size: int | None = None
) -> tuple[list[list[Any]], list[Any]]:
    """Substitute the "OTHER" blob (made in ``scratch``) and return (ops, model states)."""
    if block_size is None:
        for op in ops:
            if op[0] == "open" and "block_size" in op[3]:
                block_size = op[3]["block_size"]
                break
    block_size = block_size or harness.B
    other = os.path.join(scratch, f"other-{block_size}")

    def sub(x: Any) -> Any:
        if isinstance(x, list):
            return [sub(y) for y in x]
        return other if x == "OTHER" else x

    db = harness.is_db(ops)
    if db:
        other += "-db"
    if "OTHER" in json.dumps(ops) and not os.path.exists(other):
        harness.make_other(other, db, block_size)
    want = harness.pack(harness.OTHER_RECORDS) if db else other_rows()
    ops = sub(ops)
    states = harness.expected_states(ops, {other: want})
    return ops, states


# -- the traced child ---------------------------------------------------------


@dataclass
class Step:
    n: int  # 1-based index of the step in the run
    step: str  # the name _durable gave it
    path: str  # world-relative (or absolute if outside the world)
    info: Any  # (offset, nbytes) for write_rows; the world-relative source for rename
    acks: int  # state-changing ops acknowledged before this step
    durable: int  # acks covered by a durable point (or a sync="full" commit) before it
    snap: Snap  # the world as a crash before this step leaves it


@dataclass
class Trace:
    steps: list[Step]
    end: Snap | None  # the world after a normal exit
    acks: int
    durable: int
    exitcode: int
    error: str | None = None

    def label(self, n: int) -> str:
        if n > len(self.steps):
            return f"end/{len(self.steps)} (after a normal exit)"
        s = self.steps[n - 1]
        return f"{n}/{len(self.steps)} {s.step} {s.path}"

    def at(self, n: int) -> tuple[Snap, int, int]:
        """The crash image before step ``n`` (n = len + 1: after exit), with acks and durable."""
        if n > len(self.steps):
            assert self.end is not None
            return self.end, self.acks, self.durable
        s = self.steps[n - 1]
        return s.snap, s.acks, s.durable


class _Acks:
    acks = 0
    durable = 0


def run_ops(path: str, ops: list[list[Any]], st: _Acks) -> None:
    """Drive a real blob with ``ops``, counting acknowledged and durable ops in ``st``."""
    blob: TensorBlob | None = None
    full = False

    def ack() -> None:
        st.acks += 1
        if full:  # a sync="full" transaction survives power loss when it returns
            st.durable = st.acks

    def do(op: list[Any]) -> None:
        assert blob is not None
        harness.apply_op(blob, op)

    for op in ops:
        kind = op[0]
        if kind == "open":
            blob = harness.open_op(path, op)
            full = op[2] == "full"
            if op[1][0] in "wa":
                ack()
        elif kind in ("close", "flush"):
            assert blob is not None
            if kind == "close":
                blob.close()
                blob = None
            else:
                blob.flush()
            st.durable = st.acks
        elif kind == "unlink":
            harness.kind_of(path).unlink(path)
            ack()
            st.durable = st.acks  # durable when it returns
        elif kind in harness.BOUNDS:
            harness.set_bound(op)
        else:
            do(op)
            if kind in harness.MUTATING:
                ack()
    if blob is not None:
        blob.close()
        st.durable = st.acks


def deterministic_secrets(seed: int) -> None:
    """Make this process's uuids, salts and temporary names repeatable (same ops, same bytes)."""
    rng = random.Random(seed)
    secrets.token_bytes = lambda n=32: rng.randbytes(n)
    secrets.token_hex = lambda n=32: rng.randbytes(n).hex()
    secrets.randbits = rng.getrandbits


def _child(world: str, ops: list[list[Any]], out_path: str, boot: str | None, crash_at: int) -> int:
    torch.set_num_threads(1)
    deterministic_secrets(0)
    if boot is not None:
        _durable.boot_id = lambda: boot  # this "machine" has booted again
    st = _Acks()
    out = open(out_path, "wb")  # noqa: SIM115 - kept open until os._exit
    count = 0

    def rel(p: str) -> str:
        r = os.path.relpath(p, world)
        return p if r.startswith("..") else r

    def hook(step: str, p: str, extent: tuple[int, int] | None) -> None:
        nonlocal count
        count += 1
        if count == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        info: Any = extent
        if step == "rename":
            caller = sys._getframe(2)  # _durable.rename(src, dst) -> _step -> hook
            info = rel(caller.f_locals["src"])
        pickle.dump(("s", count, step, rel(p), info, st.acks, st.durable, snapshot(world)), out)
        out.flush()

    _durable.set_fault_hook(hook)
    path = os.path.join(world, BLOB)
    try:
        run_ops(path, ops, st)
    except BaseException:
        _durable.set_fault_hook(None)
        pickle.dump(("e", traceback.format_exc(), st.acks, st.durable, snapshot(world)), out)
        out.flush()
        return 3
    _durable.set_fault_hook(None)
    pickle.dump(("x", st.acks, st.durable, snapshot(world)), out)
    out.flush()
    return 0


def trace(world: str, ops: list[list[Any]], *, boot: str | None = None, crash_at: int = 0) -> Trace:
    """Run ``ops`` on ``world/blob`` in a forked child; record the world before every step.

    ``world`` must already hold the starting state (an empty directory for a
    workload that creates its blob). With ``crash_at`` N > 0 the child
    SIGKILLs itself just before step N instead of finishing.
    """
    out_path = world.rstrip("/") + ".trace"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out_path)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 4
        try:
            code = _child(world, ops, out_path, boot, crash_at)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"traced child hung: {ops}")
        time.sleep(0.002)
    exitcode = os.waitstatus_to_exitcode(status)
    steps: list[Step] = []
    result = Trace(steps, None, 0, 0, exitcode)
    with open(out_path, "rb") as f:
        while True:
            try:
                rec = pickle.load(f)
            except EOFError:
                break
            if rec[0] == "s":
                steps.append(Step(*rec[1:]))
            elif rec[0] == "x":
                result.acks, result.durable, result.end = rec[1], rec[2], rec[3]
            else:
                result.error, result.acks, result.durable, result.end = rec[1:]
    os.unlink(out_path)
    return result


def verify_sigkill(world: str, ops: list[list[Any]], tr: Trace, n: int, start: Snap) -> str | None:
    """Kill a real child at step ``n`` and compare what it left with the traced image ``n``.

    Returns a description of the difference, or None if they are the same
    (the lock files' informational contents aside).
    """
    materialize(start, world)
    run = trace(world, ops, crash_at=n)
    if run.exitcode != -signal.SIGKILL:
        return f"child was not killed at step {n} (exit {run.exitcode})"
    got = snapshot(world)
    want, _, _ = tr.at(n)
    if image_key(got) != image_key(want):
        files = set(got[1]) | set(want[1])
        differ = sorted(f for f in files if not _lock_file(f) and got[1].get(f) != want[1].get(f))
        return f"SIGKILL at step {n}: {differ or 'directories'} differ from the traced image"
    return None


# -- the checks ---------------------------------------------------------------


@contextlib.contextmanager
def booted(boot: str | None):
    """Look at the world as a process of boot ``boot`` (None: this real boot)."""
    if boot is None:
        yield
        return
    with harness.fake_boot(boot):
        yield


def describe_state(x: Any) -> str:
    if x is None:
        return "absent"
    n = len(x)
    head = x[: min(n, 2), 0].tolist() if n else []
    return f"{n} rows {head}"


def classify(got: Any, states: list[Any], lo: int, hi: int) -> tuple[str, str] | None:
    """None if ``got`` is one of ``states[lo..hi]``; else (guarantee, why)."""
    hi = min(hi, len(states) - 1)
    if any(harness.same(got, states[i]) for i in range(lo, hi + 1)):
        return None
    older = [i for i in range(lo) if harness.same(got, states[i])]
    allowed = f"allowed: states {lo}..{hi} = " + ", ".join(
        describe_state(states[i]) for i in range(lo, hi + 1)
    )
    if older:
        return "G2", f"found state {older[-1]} ({describe_state(got)}), an older one; {allowed}"
    return "G1", f"found {describe_state(got)}, which is no allowed state; {allowed}"


def _files_with_mtime(root: str) -> dict[str, tuple[bytes, int]]:
    out = harness.snapshot_files(root)
    for dirpath, dirnames, _files in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            out[os.path.relpath(p, root) + "/"] = (b"", os.stat(p).st_mtime_ns)
    return out


def store_problems(path: str, *, strict: bool) -> list[str]:
    """Orphan or leaked block files and temporary files of a blob no reader has open.

    Not ``strict``: every block file must be referenced or on the free list
    (freed blocks are deleted at the next durable point). ``strict`` (after a
    commit and close with no reader): exactly the referenced blocks.
    """
    problems: list[str] = []
    st = load(path, read_meta(path)).state
    try:
        names = os.listdir(os.path.join(path, "blocks"))
    except FileNotFoundError:  # a blob that lost its blocks/ (e.g. to a power cut)
        return ["the blocks/ directory is missing"]
    on_disk = {parse_block_name(n) for n in names}
    if None in on_disk:
        problems.append(
            f"stray file in blocks/: {sorted(n for n in names if parse_block_name(n) is None)}"
        )
    on_disk.discard(None)
    keep = set(st.blocks) if strict else set(st.blocks) | set(st.free)
    if on_disk - keep:
        problems.append(
            f"{'leaked' if strict else 'orphan'} block file(s) {sorted(on_disk - keep)} "
            f"(referenced {sorted(st.blocks)}, free {sorted(st.free)})"
        )
    if set(st.blocks) - on_disk:
        problems.append(f"missing block file(s) {sorted(set(st.blocks) - on_disk)}")
    tmp = [n for n in os.listdir(path) if n.endswith(".tmp")]
    if tmp:
        problems.append(f"stray temporary file(s) {tmp}")
    return problems


def litter(world: str) -> list[str]:
    """Hidden directories of an interrupted creation or unlink left next to the blob."""
    return sorted(n for n in os.listdir(world) if n.startswith(f".{BLOB}."))


@dataclass
class Verdict:
    got: Any  # the state a reader saw (None: absent; "error": could not open)
    violations: list[tuple[str, str]]  # (guarantee, detail)


def examine(
    world: str,
    states: list[Any],
    lo: int,
    hi: int,
    *,
    boot: str | None = None,
    exercise: bool = True,
    expect: Any = "model",
) -> Verdict:
    """Reopen the crash image in ``world`` read-only, then writable, and check everything.

    ``states[lo..hi]`` are the allowed model states. ``expect`` (if given a
    tensor or None) is the exact state required instead (recovery idempotence).
    """
    path = os.path.join(world, BLOB)
    out: list[tuple[str, str]] = []
    with booted(boot):
        exists = os.path.exists(path)
        before = _files_with_mtime(path) if exists else None
        try:
            got = harness.read_all(path)
        except Exception as exc:
            return Verdict("error", [("G4", f"read-only open fails: {exc!r}")])
        if exists and _files_with_mtime(path) != before:
            after = _files_with_mtime(path)
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            out.append(("G4", f"read-only open changed files: {changed}"))
        if isinstance(expect, str):
            bad = classify(got, states, lo, hi)
            if bad:
                out.append(bad)
        elif not harness.same(got, expect):
            out.append(
                (
                    "G4",
                    f"state {describe_state(got)} differs from one clean recovery's "
                    f"{describe_state(expect)}",
                )
            )
        if not exists:
            # What a user does next: create it. Nothing of the lost creation may stay behind.
            try:
                TensorBlob.open(path, "w", **CREATE).close()
            except Exception as exc:
                out.append(("G4", f"creating the blob after the crash fails: {exc!r}"))
                return Verdict(got, out)
            left = litter(world)
            if left and os.environ.get("FUZZ_LITTER", "1") != "0":
                out.append(("G4", f"an interrupted creation left a directory behind: {left}"))
            return Verdict(got, out)
        try:
            with harness.kind_of(path).open(path, "a"):
                pass
            again = harness.read_all(path)
        except Exception as exc:
            out.append(("G4", f"writable open (recovery) fails: {exc!r}"))
            return Verdict(got, out)
        if not harness.same(again, got):
            out.append(
                (
                    "G4",
                    f"recovery changed the state: a reader saw {describe_state(got)}, "
                    f"after recovery {describe_state(again)}",
                )
            )
        out += [("G4", f"after recovery: {p}") for p in store_problems(path, strict=False)]
        left = litter(world)
        if left and os.environ.get("FUZZ_LITTER", "1") != "0":
            out.append(("G4", f"leaked temporary directory next to the blob: {left}"))
        if exercise:
            try:
                harness.exercise(path)
            except Exception as exc:
                out.append(("G4", f"blob does not work after recovery (append, reopen): {exc!r}"))
                return Verdict(got, out)
            out += [
                ("G4", f"after a commit and close: {p}") for p in store_problems(path, strict=True)
            ]
    return Verdict(got, out)


def recovered_state(snap: Snap, world: str, boot: str | None = None) -> Any:
    """The state one clean recovery of ``snap`` gives (None: absent; "error": it fails)."""
    materialize(snap, world)
    path = os.path.join(world, BLOB)
    if not os.path.exists(path):
        return None
    with booted(boot):
        try:
            with harness.kind_of(path).open(path, "a"):
                pass
            return harness.read_all(path)
        except Exception:
            return "error"


def is_clean(snap: Snap, world: str, boot: str | None = None) -> bool:
    """True if the image's blob needs no recovery (or does not exist)."""
    materialize(snap, world)
    path = os.path.join(world, BLOB)
    if not os.path.exists(path):
        return True
    with booted(boot):
        try:
            return load(path, read_meta(path)).clean
        except Exception:
            return False


class Deadline:
    """A point in time (CLOCK_MONOTONIC is system-wide, so it can be passed to workers)."""

    def __init__(self, seconds: float | None = None, *, end: float | None = None) -> None:
        self.end = end if end is not None else time.monotonic() + (seconds or 0.0)

    def left(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return time.monotonic() >= self.end


def tensorblob_file() -> str:
    import tensorblob  # noqa: PLC0415

    return tensorblob.__file__


def context() -> Any:
    """The forkserver context, its server preloaded with torch and tensorblob (started once)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "tensorblob", "harness", "core"])
    return ctx


def worker_init() -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
