"""The exhaustive catalogue: every workload stopped before every one of its disk steps.

Workloads: tests/harness.py's WORKLOADS (the ones tests/test_crash.py runs)
plus the ones below (appends in many sessions, ``w`` re-create, checkpoints
under both sync levels, rolled-back transactions, ...). For each workload:

- ``explore_process_death``: the crash image before every step (and after a
  normal exit) is reopened read-only and writable and compared with the
  model (core.examine);
- ``explore_recovery``: recovery itself interrupted. An unclean blob (a
  writer killed mid-transaction, or after commits without close, or after a
  power cut) is recovered by a writable open in a traced child; the image
  before each recovery step is reopened. It must show exactly the state one
  clean recovery gives, to a reader and after a second recovery
  (idempotence). With ``depth`` 2 the second recovery is interrupted too.
"""

from __future__ import annotations

import os
import random
from typing import Any

import core
import harness
import powerloss

B = harness.B
NEW = harness.NEW
create = harness.create

EXTRA: dict[str, list[list[Any]]] = {
    # Appends in many sessions, both sync levels, every appending mode.
    "append_many_sessions": [
        *create(2),
        ["open", "a", "full", {}],
        ["write", 3, 2],
        ["close"],
        ["open", "a+", "normal", {}],
        ["write", 2, 3],
        ["flush"],
        ["write", 4, 4],
        ["close"],
        ["open", "r+", "full", {}],
        ["seek", 0, 2],
        ["write", 1, 5],
        ["close"],
        ["open", "a", "normal", {}],
        ["write", 1, 6],
        ["close"],
    ],
    # "w" on an existing blob is one truncating transaction; "w+" too, under "full".
    "recreate_w": [
        *create(9),
        ["open", "w", "normal", {}],
        ["write", 3, 2],
        ["close"],
        ["open", "w+", "full", {}],
        ["write", 5, 3],
        ["close"],
        ["open", "w", "normal", {}],
        ["close"],
    ],
    # Checkpoints (a low journal bound) under "full", with overwrites that free blocks.
    "checkpoint_full": [
        ["checkpoint_every", 350],
        ["open", "w", "full", NEW],
        *[["write", 2, i] for i in range(6)],
        ["seek", 1, 0],
        ["write", 6, 10],
        ["truncate", 3],
        ["write", 2, 11],
        ["close"],
    ],
    # Checkpoints across sessions and durable points, freeing and reaping blocks.
    "checkpoint_sessions": [
        ["checkpoint_every", 400],
        *create(6),
        ["open", "r+", "normal", {}],
        ["seek", 0, 0],
        ["write", 2, 2],
        ["flush"],
        ["truncate", 4],
        ["truncate", 3],
        ["truncate", 2],
        ["truncate", 1],
        ["close"],
        ["open", "a", "normal", {}],
        ["write", 5, 3],
        ["close"],
    ],
    # Transactions that roll back: appends into new blocks, copy-on-write overwrites, truncates.
    "rollback": [
        *create(5),
        ["open", "r+", "normal", {}],
        ["rollback", [["seek", 0, 2], ["write", 6, 2]]],
        ["rollback", [["seek", 1, 0], ["write", 2, 3]]],
        ["txn", [["seek", 4, 0], ["write", 1, 4]]],
        ["rollback", [["truncate", 2], ["write", 5, 5]]],
        ["write", 1, 6],
        ["close"],
    ],
    "rollback_full": [
        *create(5, sync="full"),
        ["open", "r+", "full", {}],
        ["rollback", [["seek", 0, 2], ["write", 6, 2]]],
        ["write", 2, 3],
        ["rollback", [["seek", 1, 0], ["write", 2, 4], ["truncate", 1]]],
        ["close"],
    ],
    # A sync="full" session whose first transaction creates a block file after a clean close.
    "full_new_block": [
        *create(4),
        ["open", "a", "full", {}],
        ["write", 3, 2],
        ["close"],
    ],
    # Overwrites and truncates under "full": every commit frees blocks, reaped at once.
    "full_overwrite": [
        *create(9, sync="full"),
        ["open", "r+", "full", {}],
        ["seek", 1, 0],
        ["write", 5, 2],
        ["truncate", 3],
        ["seek", 0, 2],
        ["write", 6, 3],
        ["close"],
    ],
    # Extend under "full", both orders.
    "extend_full": [
        *create(5, sync="full"),
        ["open", "a", "full", {}],
        ["extend", "OTHER", False],
        ["extend", "OTHER", True],
        ["close"],
    ],
}

CATALOGUE: dict[str, list[list[Any]]] = {**harness.WORKLOADS, **EXTRA}

# Workloads whose unclean images seed the recovery-interruption runs.
RECOVERY_SEEDS = (
    "records_overwrite",
    "transaction",
    "overwrite",
    "checkpoint",
    "full_sync",
    "extend_blocks",
    "rollback",
    "truncate_regrow",
    "append_many_sessions",
)

RECOVERY_OPS = [["open", "a", "normal", {}], ["close"]]


def _scratch(base: str, name: str) -> str:
    d = os.path.join(base, name)
    os.makedirs(d, exist_ok=True)
    return d


def run_base(name: str, ops: list[list[Any]], scratch: str, tally: core.Tally, part: str):
    """Trace a workload from an empty world; return (ops, states, trace) or None on failure."""
    ops, states = core.prepare(ops, scratch)
    world = os.path.join(scratch, "w")
    core.materialize(((), {}), world)
    tr = core.trace(world, ops)
    if tr.exitcode != 0 or tr.error:
        tally.violations.append(
            core.Violation("RUN", part, name, "no crash", f"workload failed: {tr.error}", ops=ops)
        )
        return None
    if tr.acks != len(states) - 1:
        tally.violations.append(
            core.Violation(
                "RUN", part, name, "no crash", f"{tr.acks} acks, model has {len(states) - 1}"
            )
        )
        return None
    return ops, states, tr


def explore_process_death(
    name: str,
    ops: list[list[Any]],
    scratch: str,
    deadline: core.Deadline,
    *,
    exercise: bool = True,
    verify_kills: int = 0,
    seed: int = 0,
) -> core.Tally:
    """Every crash point of one workload under process death (SIGKILL)."""
    part = "exhaustive/process-death"
    tally = core.Tally()
    base = run_base(name, ops, scratch, tally, part)
    if base is None:
        return tally
    ops, states, tr = base
    cw = core.fast(scratch, "check")
    seen: set[bytes] = set()
    total = len(tr.steps) + 1
    for n in range(1, total + 1):
        if deadline.passed():
            tally.incomplete.append(f"{part} {name}: {n - 1}/{total} crash points")
            break
        snap, acks, _durable = tr.at(n)
        lo, hi = acks, acks + 1
        tally.count(part)
        key = core.image_key(snap, lo, hi)
        if key in seen:
            continue
        seen.add(key)
        tally.images += 1
        core.materialize(snap, cw)
        verdict = core.examine(cw, states, lo, hi, exercise=exercise)
        for g, detail in verdict.violations:
            tally.violations.append(core.Violation(g, part, name, tr.label(n), detail, ops=ops))
    # The traced images are what a real SIGKILL leaves: check that on a few steps.
    rng = random.Random(seed)
    for n in rng.sample(range(1, len(tr.steps) + 1), min(verify_kills, len(tr.steps))):
        diff = core.verify_sigkill(os.path.join(scratch, "kill"), ops, tr, n, ((), {}))
        if diff:
            tally.notes.append(f"{name}: traced image and real SIGKILL differ: {diff}")
    return tally


def _unclean_points(
    tr: core.Trace, scratch: str, limit: int | None, rng: random.Random, boot: str | None = None
) -> list[int]:
    cw = core.fast(scratch, "probe")
    points: list[int] = []
    last: bytes | None = None
    for n in range(1, len(tr.steps) + 2):
        snap, acks, _ = tr.at(n)
        key = core.image_key(snap, acks)
        if key == last:
            continue
        last = key
        if not core.is_clean(snap, cw, boot):
            points.append(n)
    if limit is not None and len(points) > limit:
        points = sorted(rng.sample(points, limit))
    return points


def interrupt_recovery(
    name: str,
    label: str,
    start: core.Snap,
    states: list[Any],
    scratch: str,
    *,
    tally: core.Tally,
    deadline: core.Deadline,
    boot: str | None,
    depth: int,
    ops: list[list[Any]],
    exercise: bool,
) -> None:
    """Recover ``start`` in a traced child; examine the image before each recovery step."""
    part = "exhaustive/recovery-interrupt"
    cw = core.fast(scratch, "check")
    want = core.recovered_state(start, cw, boot)
    if isinstance(want, str):
        return  # recovery of the start image fails: the process-death check reports that
    world = os.path.join(scratch, f"rec{depth}")
    core.materialize(start, world)
    if not os.path.exists(os.path.join(world, core.BLOB)):
        return
    tr = core.trace(world, RECOVERY_OPS, boot=boot)
    if tr.exitcode != 0:
        tally.violations.append(
            core.Violation("G4", part, name, label, f"recovery failed: {tr.error}", ops=ops)
        )
        return
    seen: set[bytes] = set()
    for r in range(1, len(tr.steps) + 2):
        if deadline.passed():
            tally.incomplete.append(f"{part} {name}")
            return
        snap, _, _ = tr.at(r)
        tally.count(part)
        key = core.image_key(snap)
        if key in seen:
            continue
        seen.add(key)
        tally.images += 1
        core.materialize(snap, cw)
        where = f"{label}, then recovery killed at {tr.label(r)}"
        verdict = core.examine(cw, states, 0, 0, boot=boot, exercise=exercise, expect=want)
        for g, detail in verdict.violations:
            tally.violations.append(
                core.Violation(g, part, name, where, detail, variant=f"depth {depth}", ops=ops)
            )
        if depth > 1 and r <= len(tr.steps) and not core.is_clean(snap, cw, boot):
            interrupt_recovery(
                name,
                where,
                snap,
                states,
                scratch,
                tally=tally,
                deadline=deadline,
                boot=boot,
                depth=depth - 1,
                ops=ops,
                exercise=exercise,
            )


def explore_recovery(
    name: str,
    ops: list[list[Any]],
    scratch: str,
    deadline: core.Deadline,
    *,
    points: int | None = 3,
    depth: int = 1,
    power: bool = True,
    seed: int = 0,
    exercise: bool = True,
) -> core.Tally:
    """Recovery interrupted at each of its own steps, from unclean images of a workload.

    ``points``: how many unclean crash images of the workload to start from
    (None: all). With ``power``, also from the power-cut image (ns=undo,
    tail=drop, data=old) of each, recovered after a "reboot".
    """
    tally = core.Tally()
    base = run_base(name, ops, scratch, tally, "exhaustive/recovery-interrupt")
    if base is None:
        return tally
    ops, states, tr = base
    rng = random.Random(seed)
    for n in _unclean_points(tr, scratch, points, rng):
        if deadline.passed():
            tally.incomplete.append(f"exhaustive/recovery-interrupt {name}")
            break
        snap, _acks, _ = tr.at(n)
        label = f"writer killed at {tr.label(n)}"
        interrupt_recovery(
            name,
            label,
            snap,
            states,
            scratch,
            tally=tally,
            deadline=deadline,
            boot=None,
            depth=depth,
            ops=ops,
            exercise=exercise,
        )
        if power:
            model = powerloss.DiskModel(((), {}))
            model.replay(tr, n)
            img = model.image(powerloss.CI_VARIANTS[0], rng)
            interrupt_recovery(
                name,
                f"power cut at {tr.label(n)} ({powerloss.CI_VARIANTS[0]})",
                img,
                states,
                scratch,
                tally=tally,
                deadline=deadline,
                boot="fuzz-boot-2",
                depth=depth,
                ops=ops,
                exercise=exercise,
            )
    return tally
