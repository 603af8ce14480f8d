"""``tensorblob recover``: plan the writer's recovery from a Scan, then run it under the lock.

The plan comes first, from a read-only ``_check.scan``: what a writable open
would do (replay, discard the torn tail, delete orphans, freed blocks and
stray temporary files, checkpoint), and, where damage stops that, what
``--salvage`` would drop to keep the longest consistent prefix. ``--dry-run``
prints the plan and changes nothing (it does not even take the writer lock).

Otherwise recover takes the writer lock, scans again (the blob may have
changed while it waited) and runs the plan: ``_recovery.recover`` on the
committed state, or on the salvaged one, then a close marker in the new
journal so the blob is clean. A blob that is already clean, with nothing to
delete, is not touched at all. Every disk change goes through ``_durable``;
recovery can be interrupted at any step and run again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _durable, _records, _recovery, _snapshot
from ._blockfiles import BLOCKS, BlockFiles
from ._check import scan
from ._findings import EXIT_BUSY, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, Drops, Problem, Scan
from ._journal import JournalWriter
from ._locking import READERS, WriterLock, holder_text, probe_lock
from .errors import LockTimeoutError, TensorBlobError


@dataclass
class Outcome:
    """What ``recover`` did or would do; ``_cli`` prints it as text or JSON."""

    path: str
    dry_run: bool
    salvage: bool
    exit_code: int = EXIT_OK
    verdict: str = ""
    summary: str = ""
    problems: list[Problem] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    dropped: Drops = field(default_factory=Drops)
    changed: bool = False
    rows: int | None = None
    generation: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "salvage": self.salvage,
            "changed": self.changed,
            "dropped": self.dropped.as_dict(),
            "rows": self.rows,
            "generation": self.generation,
        }


def needs_work(sc: Scan) -> bool:
    """Would recover change anything? False for a clean blob with nothing to delete."""
    chosen = sc.loaded or sc.salvage
    if chosen is None:
        return False
    return bool(
        sc.salvage is not None
        or not chosen.clean
        or sc.temps
        or sc.orphans
        or sc.reclaimable
        or not sc.readers_file
        or not sc.blocks_dir
    )


def plan(sc: Scan) -> list[_recovery.Step]:
    """The steps recover would take, in order: a salvage's drops, the files it recreates,
    the writer's recovery (``_recovery.plan``, the list ``_recovery.recover`` carries out),
    and the close marker."""
    if not needs_work(sc):
        return []
    chosen = sc.loaded or sc.salvage
    assert chosen is not None
    assert sc.meta is not None
    steps = []
    if sc.salvage is not None:
        steps += [_recovery.Step("drop", f"drop: {ln}", f"dropped: {ln}") for ln in sc.drops.lines]
    if not sc.readers_file:
        steps.append(_READERS_STEP)
    if not sc.blocks_dir:
        steps.append(_BLOCKS_DIR_STEP)
    blocks = BlockFiles(sc.root, sc.meta)
    steps += _recovery.plan(
        sc.root, blocks, chosen, reclaimable=len(sc.reclaimable), salvage=sc.salvage is not None
    )
    steps.append(_CLOSE_STEP)
    return [s for s in steps if s.plan]


_READERS_STEP = _recovery.Step(
    "readers", "recreate the empty readers file", "recreated the empty readers file"
)
_BLOCKS_DIR_STEP = _recovery.Step(
    "blocks-dir", "recreate the blocks/ directory", "recreated the blocks/ directory"
)
_CLOSE_STEP = _recovery.Step(
    "close", "mark the journal closed: the blob is then clean", "marked the journal closed"
)


def recover(
    path: str,
    *,
    timeout: float = 30.0,
    dry_run: bool = False,
    salvage: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    """Recover the blob at ``path`` as a writable open would; see the module docstring."""
    first = scan(path, lease=True)
    out = Outcome(first.root, dry_run, salvage)
    try:
        if _refuse(first, out) or dry_run:
            if dry_run and out.exit_code == EXIT_OK:
                _dry_run(first, out)
            return out
    finally:
        first.close()

    lock = WriterLock(first.root, timeout)
    try:
        lock.acquire()
    except LockTimeoutError:
        now = probe_lock(first.root)
        who = holder_text(now) if now.held else "another process"
        return _stop(
            out,
            EXIT_BUSY,
            "busy",
            Problem(
                "error",
                "writer-busy",
                f"another writer has the blob open ({who}); recover gave up waiting for the "
                f"writer lock after {timeout:g} s. Nothing was changed",
                "close that writer (or let it finish) and run recover again; a crashed writer "
                "releases the lock at once, so a held lock means a live process. A longer "
                "--timeout waits longer",
            ),
        )
    except OSError as exc:
        if exc.errno == errno.EROFS and not plan(first):
            # No writer can open it here, and a clean blob needs no write.
            _nothing_to_do(first, out)
            return out
        return _stop(
            out,
            EXIT_PROBLEMS,
            "failed",
            Problem(
                "error",
                "lock-failed",
                f"cannot take the writer lock: {exc}. Nothing was changed",
                "recover needs write permission on the blob directory and its files",
            ),
        )
    try:
        sc = scan(first.root, lease=False, own_lock=True)
        out.problems = sc.problems
        if _refuse(sc, out):
            return out
        steps = plan(sc)
        if not steps:
            _nothing_to_do(sc, out)
            return out
        lock.record_owner()  # name this process to a writer that waits for the lock
        _execute(sc, out, progress)
    finally:
        lock.release()
    return out


def _stop(out: Outcome, code: int, verdict: str, problem: Problem) -> Outcome:
    out.exit_code, out.verdict = code, verdict
    out.problems.append(problem)
    out.summary = problem.message
    return out


def _refuse(sc: Scan, out: Outcome) -> bool:
    """Fill ``out`` and return True if recover must stop before changing anything."""
    out.problems = sc.problems
    if sc.kind in ("missing", "not-a-blob", "unsupported"):
        out.exit_code = EXIT_USAGE
        out.verdict = "unsupported-version" if sc.kind == "unsupported" else "not-a-blob"
        out.summary = "recover did nothing: see the error above"
        return True
    if sc.unrepairable:
        out.exit_code, out.verdict = EXIT_PROBLEMS, "unrepairable"
        out.summary = (
            "recover cannot repair this blob, not even with --salvage: the damage is in the "
            "file that says what the blob holds (see the errors above). Nothing was changed"
        )
        return True
    if sc.writer_active and out.dry_run:
        out.exit_code, out.verdict = EXIT_BUSY, "busy"
        out.summary = (
            f"a writer has the blob open right now ({holder_text(sc.lock)}): recover would "
            f"wait for it to close (up to --timeout seconds) and then find what is left to do. "
            "Nothing was changed"
        )
        return True
    if sc.salvage is not None and not out.salvage:
        out.exit_code, out.verdict = EXIT_PROBLEMS, "needs-salvage"
        out.dropped = sc.drops
        out.summary = (
            "recover stopped: repairing this blob means dropping committed data (see the errors "
            "above). Nothing was changed. Restore the damaged files from a backup, or run "
            "`tensorblob recover --salvage PATH` to keep the longest consistent prefix; it "
            "would: " + "; ".join(sc.drops.lines)
        )
        return True
    return False


def _dry_run(sc: Scan, out: Outcome) -> None:
    out.actions = [s.plan for s in plan(sc)]
    out.dropped = sc.drops if sc.salvage is not None else Drops()
    state = sc.state
    if state is not None:
        out.rows = state.length
        out.generation = state.gen + 1 if out.actions else state.gen
    if not out.actions:
        _nothing_to_do(sc, out)
        out.summary += " (dry run)"
        return
    out.verdict = "would-salvage" if sc.salvage is not None else "would-recover"
    out.summary = "dry run: nothing was changed; run without --dry-run to do the above"


def _nothing_to_do(sc: Scan, out: Outcome) -> None:
    out.verdict = "nothing-to-do"
    state = sc.state
    if state is not None:
        out.rows, out.generation = state.length, state.gen
    out.summary = "nothing to do: the blob is clean"
    if sc.unknown:
        out.summary += f" (left alone: {len(sc.unknown)} file(s) that are not tensorblob's)"


def _execute(sc: Scan, out: Outcome, progress: Callable[[int, int], None] | None) -> None:
    root, meta = sc.root, sc.meta
    chosen = sc.loaded or sc.salvage
    assert meta is not None
    assert chosen is not None
    before = chosen.state.length
    total = len(chosen.dirty) + len(sc.orphans) + len(sc.reclaimable) + len(sc.temps) + 14
    steps = 0

    def hook(step: str, p: str, extent: tuple[int, int] | None) -> None:
        nonlocal steps
        if old is not None:
            old(step, p, extent)
        steps += 1
        if progress is not None:
            progress(min(steps, total), total)

    old = _durable.set_fault_hook(hook)
    out.changed = True
    if sc.salvage is not None:
        out.dropped = sc.drops
        out.actions += [s.done for s in plan(sc) if s.code == "drop"]
    try:
        if not sc.readers_file:
            _durable.create_file(os.path.join(root, READERS), b"", sync=False)
            out.actions.append(_READERS_STEP.done)
        if not sc.blocks_dir:
            _durable.mkdir(os.path.join(root, BLOCKS))
            out.actions.append(_BLOCKS_DIR_STEP.done)
        if not sc.readers_file or not sc.blocks_dir:
            _durable.fsync_dir(root)
        blocks = BlockFiles(root, meta)
        out.actions += [s.done for s in _recovery.recover(root, meta, blocks, chosen)]
        _close_journal(root, meta)
        out.actions.append(_CLOSE_STEP.done)
    except (OSError, TensorBlobError) as exc:
        out.exit_code, out.verdict = EXIT_PROBLEMS, "failed"
        out.problems.append(
            Problem(
                "error",
                "recover-failed",
                f"recover failed part-way: {exc}",
                "fix the cause (disk space, permissions, I/O errors) and run recover again: "
                "recovery can be interrupted at any step and rerun, and nothing committed "
                "has been dropped",
            )
        )
        out.summary = f"recover failed part-way ({exc}); run it again once the cause is fixed"
        return
    finally:
        _durable.set_fault_hook(old)
    after = scan(root, lease=False, own_lock=True)
    state = after.state
    out.rows = state.length if state is not None else None
    out.generation = state.gen if state is not None else None
    if needs_work(after) or after.count("error") or state is None:
        out.exit_code, out.verdict = EXIT_PROBLEMS, "failed"
        out.problems = after.problems
        out.summary = "recover ran, but the blob still has problems (listed above)"
        return
    out.problems = [p for p in after.problems if p.severity != "note"] + [
        p for p in after.problems if p.severity == "note"
    ]
    if sc.salvage is not None:
        out.verdict = "salvaged"
        out.summary = (
            f"salvaged: the blob is clean with {state.length} rows (generation {state.gen}). "
            "Dropped: " + "; ".join(sc.drops.lines)
        )
    else:
        out.verdict = "recovered"
        lost = "nothing committed was lost" if state.length == before else "ROWS CHANGED"
        out.summary = (
            f"recovered: the blob is clean with {state.length} rows (generation {state.gen}); "
            f"{lost}"
        )


def _close_journal(root: str, meta: Any) -> None:
    """Append a close marker to the fresh journal, as a writer's ``close()`` does (F7.5)."""
    loaded = _snapshot.load(root, meta)
    j = loaded.journal
    assert j is not None
    writer = JournalWriter(root, j.salt, len(j.records), j.end)
    try:
        writer.append(_records.sync_record(True))
        writer.sync()
    finally:
        writer.close()
