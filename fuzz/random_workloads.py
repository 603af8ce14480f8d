"""Random workloads: hypothesis generates op sequences and crash points; failures shrink.

A workload is one to three writer sessions (every writable mode, both sync
levels, block sizes 1 to 5 rows, sometimes a low checkpoint bound) of
writes, seeks, truncates, extends in both orders, transactions, transactions
that roll back, and flushes. The traced child (fuzz/core.py) runs it once;
then hypothesis draws crash points (indexes into that run's step log) and,
for each, either a process death or a power cut with a drawn variant of the
power-loss model (fuzz/powerloss.py). A violation fails the example, and
hypothesis shrinks it to a minimal op list and crash step, printed as a
reproducer.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from typing import Any

import core
import harness
import powerloss
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st


def _simple_op() -> st.SearchStrategy[list[Any]]:
    return st.one_of(
        st.tuples(st.just("write"), st.integers(1, 7), st.integers(0, 99)).map(list),
        st.tuples(st.just("seek"), st.integers(-6, 14), st.integers(0, 2)).map(list),
        st.tuples(st.just("truncate"), st.one_of(st.none(), st.integers(0, 14))).map(list),
        st.tuples(st.just("extend"), st.just("OTHER"), st.booleans()).map(list),
    )


def _op() -> st.SearchStrategy[list[Any]]:
    inner = st.lists(_simple_op(), min_size=1, max_size=3)
    return st.one_of(
        _simple_op(),
        _simple_op(),
        st.tuples(st.just("txn"), inner).map(list),
        st.tuples(st.just("rollback"), inner).map(list),
        st.just(["flush"]),
    )


@st.composite
def workloads(draw: st.DrawFn) -> list[list[Any]]:
    block_size = draw(st.integers(1, 5))
    ops: list[list[Any]] = []
    bound = draw(st.sampled_from([None, None, 250, 600]))
    if bound:
        ops.append(["checkpoint_every", bound])
    sessions = draw(st.integers(1, 3))
    for i in range(sessions):
        if i == 0:
            mode = draw(st.sampled_from(["w", "a", "w+", "a+"]))
            extra = {"dtype": "float32", "shape": [3], "block_size": block_size}
            if draw(st.integers(0, 3)) == 0:  # a TensorDB: records of four fields
                extra = {"schema": harness.SCHEMA, "block_size": block_size}
        else:
            mode = draw(st.sampled_from(["a", "r+", "w", "a+", "w+"]))
            extra = {}
        ops.append(["open", mode, draw(st.sampled_from(["normal", "full"])), extra])
        ops += draw(st.lists(_op(), max_size=6))
        if i < sessions - 1 or draw(st.booleans()):
            ops.append(["close"])
    return ops


CHECKS = ("kill", *(str(v) for v in powerloss.CI_VARIANTS), "power-mix")


def _variant(name: str) -> powerloss.Variant:
    if name == "power-mix":
        return powerloss.Variant("mix", "garbage", "mix")
    return next(v for v in powerloss.CI_VARIANTS if str(v) == name)


class Found(AssertionError):
    """A violation; its message is the reproducer."""


def check_one(  # noqa: PLR0917
    ops: list[list[Any]],
    tr: core.Trace,
    states: list[Any],
    n: int,
    how: str,
    scratch: str,
    seed: int,
) -> list[tuple[str, str]]:
    """Examine one crash point of a traced workload: a process death or a power cut."""
    cw = core.fast(scratch, "check")
    snap, acks, durable = tr.at(n)
    if how == "kill":
        core.materialize(snap, cw)
        return core.examine(cw, states, acks, acks + 1).violations
    model = powerloss.DiskModel(((), {}))
    model.replay(tr, n)
    img = model.image(_variant(how), random.Random(seed))
    return powerloss.check_power_image(
        img, cw, states, durable, acks + 1, powerloss.REBOOT
    ).violations


def run_batch(
    seed: int, examples: int, scratch: str, deadline: core.Deadline, points: int = 3
) -> core.Tally:
    """One hypothesis run of ``examples`` workloads; a failure is shrunk and reported."""
    part = "random"
    tally = core.Tally()
    cache: dict[str, tuple[Any, ...]] = {}

    def traced(ops: list[list[Any]]) -> tuple[Any, ...]:
        key = json.dumps(ops)
        if key not in cache:
            if len(cache) > 64:
                cache.clear()
            real, states = core.prepare(ops, scratch)
            world = os.path.join(scratch, "w")
            core.materialize(((), {}), world)
            cache[key] = (real, states, core.trace(world, real))
        return cache[key]

    @hseed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
    )
    @given(ops=workloads(), data=st.data())
    def body(ops: list[list[Any]], data: st.DataObject) -> None:
        real, states, tr = traced(ops)
        if tr.exitcode != 0 or tr.acks != len(states) - 1:
            raise Found(json.dumps({"ops": ops, "error": tr.error or f"acks {tr.acks}"}))
        total = len(tr.steps) + 1
        crashes = data.draw(
            st.lists(st.integers(1, total), min_size=1, max_size=points, unique=True)
        )
        for n in crashes:
            how = data.draw(st.sampled_from(CHECKS))
            tally.count(part)
            tally.images += 1
            bad = check_one(real, tr, states, n, how, scratch, seed)
            if bad:
                raise Found(
                    json.dumps(
                        {"ops": ops, "crash": n, "step": tr.label(n), "check": how, "why": bad[0]}
                    )
                )

    try:
        body()
    except Exception as exc:  # Found, or an ExceptionGroup of them, or a harness error
        for e in _leaves(exc):
            _record(e, tally, part, seed)
    return tally


def _leaves(exc: BaseException) -> list[BaseException]:
    group = getattr(exc, "exceptions", None)  # an ExceptionGroup (Python >= 3.11)
    if isinstance(group, (list, tuple)):
        return [leaf for e in group for leaf in _leaves(e)]
    return [exc]


def _record(exc: BaseException, tally: core.Tally, part: str, seed: int) -> None:
    if not isinstance(exc, Found):
        tally.violations.append(
            core.Violation("ERR", part, "random", "?", f"campaign error: {exc!r}", seed=seed)
        )
        return
    rep = json.loads(str(exc))
    if "error" in rep:
        tally.violations.append(
            core.Violation(
                "RUN", part, "random", "no crash", rep["error"], seed=seed, ops=rep["ops"]
            )
        )
        return
    g, why = rep["why"]
    tally.violations.append(
        core.Violation(
            g,
            part,
            "random",
            f"{rep['crash']} ({rep['step']})",
            why,
            variant=rep["check"],
            seed=seed,
            ops=rep["ops"],
        )
    )


batch_task = run_batch  # the runner's name for it


def run(seconds: float, seed: int, examples: int = 15) -> core.Tally:
    """Batches of hypothesis runs with seeds seed, seed+1, ... until the time is up."""
    deadline = core.Deadline(seconds)
    tally = core.Tally()
    scratch = tempfile.mkdtemp(prefix="fuzz-random-")
    try:
        s = seed
        while not deadline.passed():
            tally.merge(run_batch(s, examples, scratch, deadline))
            s += 1
    finally:
        core.cleanup(scratch)
    return tally


if __name__ == "__main__":  # pragma: no cover
    import sys

    harness.torch.set_num_threads(1)
    t = run(
        float(sys.argv[1]) if len(sys.argv) > 1 else 20,
        int(sys.argv[2]) if len(sys.argv) > 2 else 0,
    )
    print(t.summary())
