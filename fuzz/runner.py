"""Plans and runs the campaign's parts within a time budget, on a pool of worker processes.

Profiles:

- ``ci``: what tests/test_fuzz_ci.py runs (about 1.5 to 2 minutes on two
  cores): the exhaustive catalogue under process death with one clean
  recovery per image, recovery interrupted at each of its steps from a few
  unclean images per seed workload (also after a power cut), the power-loss
  model with the four CI variants at every step of every catalogue
  workload and during recovery, a short random run and a short soak.
- ``long``: what ``scripts/fuzz --budget`` runs: the same, then recovery
  interrupted from every unclean image and again inside itself (depth 2),
  every power-loss variant, and random workloads until the budget is spent.
"""

from __future__ import annotations

import collections
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import core

PARTS = ("exhaustive", "random", "power", "soak")


@dataclass
class Task:
    part: str
    module: str
    fn: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def run_task(task: Task, end: float) -> core.Tally:
    """Run one task in a worker process, in a scratch directory of its own."""
    scratch = tempfile.mkdtemp(prefix=f"fuzz-{task.part}-")
    try:
        engine = os.path.dirname(core.tensorblob_file())
        want = os.environ.get("FUZZ_EXPECT_ENGINE")
        if want and engine != want:  # the mutation check relies on this
            raise RuntimeError(f"worker runs the engine in {engine}, not {want}")
        fn = getattr(importlib.import_module(task.module), task.fn)
        return fn(*task.args, scratch=scratch, deadline=core.Deadline(end=end), **task.kwargs)
    except Exception as exc:  # a bug of the campaign, not of the engine: still reported
        import traceback  # noqa: PLC0415

        t = core.Tally()
        t.violations.append(
            core.Violation(
                "ERR",
                task.part,
                f"{task.module}.{task.fn}{task.args[:1]}",
                "?",
                f"campaign error: {exc!r}\n{traceback.format_exc()}",
            )
        )
        return t
    finally:
        core.cleanup(scratch)


def random_task(seed: int, examples: int) -> Task:
    return Task("random", "random_workloads", "batch_task", (seed, examples))


# The power-loss workloads of the CI run: between them every durability step.
CI_POWER = (
    "full_sync",
    "full_logged",
    "full_logged_sessions",
    "records_logged",
    "full_new_block",
    "full_overwrite",
    "rollback_full",
    "flush_points",
    "overwrite",
    "truncate_regrow",
    "checkpoint",
    "checkpoint_full",
    "checkpoint_sessions",
    "rotations",
    "append_many_sessions",
    "recreate_w",
    "extend_blocks",
    "append",
    "unlink",
    "records_overwrite",
    "records_full_sync",
)


def plan(profile: str, only: str | None, seed: int) -> list[Task]:
    """The tasks of a profile, interleaved across parts (so a cut budget spares none)."""
    import campaign  # noqa: PLC0415
    import powerloss  # noqa: PLC0415

    long = profile == "long"
    names = sorted(campaign.CATALOGUE, key=lambda n: -len(campaign.CATALOGUE[n]))
    death: list[Task] = []
    recovery: list[Task] = []
    power: list[Task] = []
    if only in (None, "exhaustive"):
        for i, name in enumerate(names):
            death.append(
                Task(
                    "exhaustive",
                    "campaign",
                    "explore_process_death",
                    (name, campaign.CATALOGUE[name]),
                    {"verify_kills": 2 if long else int(i < 4), "seed": seed + i},
                )
            )
        for i, name in enumerate(campaign.RECOVERY_SEEDS):
            recovery.append(
                Task(
                    "exhaustive",
                    "campaign",
                    "explore_recovery",
                    (name, campaign.CATALOGUE[name]),
                    {
                        "points": None if long else 2,
                        "depth": 2 if long else 1,
                        "seed": seed + i,
                        "power": True,
                    },
                )
            )
    if only in (None, "power"):
        variants = powerloss.ALL_VARIANTS if long else powerloss.CI_VARIANTS
        for i, name in enumerate(names if long else CI_POWER):
            power.append(
                Task(
                    "power",
                    "powerloss",
                    "explore_power",
                    (name, campaign.CATALOGUE[name]),
                    {"variants": variants, "seed": seed + i},
                )
            )
        for i, name in enumerate(campaign.RECOVERY_SEEDS):
            power.append(
                Task(
                    "power",
                    "powerloss",
                    "explore_power_recovery",
                    (name, campaign.CATALOGUE[name]),
                    {"points": None if long else 2, "variants": variants, "seed": seed + i},
                )
            )
    tasks: list[Task] = []
    queues = [power, death, recovery]
    while any(queues):
        for q in queues:
            if q:
                tasks.append(q.pop(0))
    return tasks


def execute(
    tasks: list[Task],
    end: float,
    *,
    workers: int = 2,
    filler: Callable[[int], Task] | None = None,
    stop_on_first: bool = False,
    progress: Callable[[str], None] | None = None,
) -> core.Tally:
    """Run ``tasks`` (then ``filler(i)`` tasks while time is left) on a process pool."""
    tally = core.Tally()
    pending = collections.deque(tasks)
    ctx = core.context()
    pool = ctx.Pool(workers, initializer=core.worker_init)
    running: list[tuple[Task, Any]] = []
    i = 0
    try:
        while True:
            while len(running) < workers and time.monotonic() < end:
                if pending:
                    t = pending.popleft()
                elif filler is not None and end - time.monotonic() > 3:
                    t = filler(i)
                    i += 1
                else:
                    break
                running.append((t, pool.apply_async(run_task, (t, end))))
            if not running:
                break
            time.sleep(0.02)
            for item in [r for r in running if r[1].ready()]:
                running.remove(item)
                got = item[1].get()
                tally.merge(got)
                if progress:
                    progress(
                        f"{item[0].part} {item[0].fn}{item[0].args[:1]}: "
                        f"{got.crash_points} states, "
                        f"{len(got.violations)} violations"
                    )
                if stop_on_first and got.violations:
                    pending.clear()
                    filler = None
                    end = time.monotonic()
            if time.monotonic() > end + 120:  # a task ignores its deadline: give up on it
                tally.incomplete.append(f"{len(running)} task(s) still running at the deadline")
                break
        if pending:
            tally.incomplete.append(
                f"{len(pending)} task(s) never started: "
                + ", ".join(sorted({f"{t.part}:{t.args[0]}" for t in pending if t.args}))
            )
    finally:
        pool.terminate()
        pool.join()
    return tally


def run(
    budget: float,
    seed: int,
    *,
    only: str | None = None,
    profile: str = "long",
    workers: int = 2,
    stop_on_first: bool = False,
    soak_seconds: float | None = None,
    random_examples: int = 12,
    progress: Callable[[str], None] | None = None,
) -> core.Tally:
    """The whole campaign (or one part of it) within ``budget`` seconds."""
    start = time.monotonic()
    tally = core.Tally()
    if only == "mutate":
        import mutate  # noqa: PLC0415

        return mutate.run(budget, seed, progress=progress)
    do_soak = only in (None, "soak") and soak_seconds != 0.0
    if soak_seconds is None:
        soak_seconds = budget if only == "soak" else min(max(0.1 * budget, 5.0), 120.0)
    if not do_soak:
        soak_seconds = 0.0
    pool_end = start + budget - soak_seconds
    tasks = plan(profile, only, seed) if only != "soak" else []
    filler = None
    if only in (None, "random"):

        def filler(i: int) -> Task:
            return random_task(seed * 1000 + i, random_examples)

    if tasks or filler:
        tally.merge(
            execute(
                tasks,
                pool_end,
                workers=workers,
                filler=filler,
                stop_on_first=stop_on_first,
                progress=progress,
            )
        )
    if do_soak and not (stop_on_first and tally.violations):
        import soak  # noqa: PLC0415

        left = start + budget - time.monotonic()
        tally.merge(soak.run(max(min(soak_seconds, left), 3.0), seed))
    return tally
