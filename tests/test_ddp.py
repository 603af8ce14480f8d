"""Real torch.distributed (gloo, two ranks, file rendezvous) on a blob a collector appends to.

Each rank runs ``_rank_main``: a training loop over ``shared_snapshot`` with a
``DistributedBlobSampler`` and a ``BlobLoader``, an ``all_reduce`` per step
as DDP's gradient sync (so ranks with unequal batch counts would hang, and
the gloo timeout would fail the test), and a log of the indices of every
batch. Rows encode their own index (``[i, -i, 3 * i]``), so the logs show
both which rows each step read and that no row was torn. Every process runs
under a timeout.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from tensorblob import (
    BlobTypeError,
    InvalidArgumentError,
    TensorBlob,
    TensorDB,
    UnsupportedOperationError,
)
from tensorblob.data import (
    BlobLoader,
    DistributedBlobSampler,
    SharedReader,
    shared_snapshot,
)

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
BATCH = 8
BLOCK = 16
SEED = 11
TIMEOUT = 90  # seconds for any process of a test


def row(i: torch.Tensor) -> torch.Tensor:
    return torch.stack([i, -i, 3 * i], dim=1)


def _ctx() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "tensorblob", "tensorblob.data"])
    return ctx


def _collector(path: str, stop: str) -> None:
    """Append rows that encode their index, a few per transaction, until ``stop`` exists."""
    with TensorBlob.open(path, "a") as blob:
        while not os.path.exists(stop) and len(blob) < 20_000:
            blob.write(row(torch.arange(len(blob), len(blob) + 4)))
            time.sleep(0.002)


def _grown(path: str, than: int) -> None:
    """Wait until the blob's newest snapshot is longer than ``than`` (the collector appends)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(path, "meta")):
            with TensorBlob.open(path, "r") as r:
                if len(r) > than:
                    return
        time.sleep(0.01)
    raise AssertionError("the collector did not append")


def _rank_main(rank: int, rdzv: str, path: str, out: str, cfg: dict[str, Any]) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{rdzv}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=30),
    )  # fmt: skip
    blob = TensorBlob.open(path, "r") if rank == 0 else None
    shared = shared_snapshot(blob, src=0)
    if blob is not None:
        blob.close()  # every rank holds the snapshot with a lease of its own
    sampler = DistributedBlobSampler(
        shared, batch_size=BATCH, seed=SEED, window_blocks=cfg.get("window")
    )
    start = 0
    if cfg.get("resume"):
        with open(os.path.join(out, f"ckpt-{cfg['resume']}.json")) as f:
            state = json.load(f)["state"]
        sampler.load_state_dict(state)
        start = state["epoch"]
    workers = cfg.get("workers", [0, 0])[rank]
    loader = BlobLoader(
        shared,
        batch_sampler=sampler,
        num_workers=workers,
        multiprocessing_context="spawn" if workers else None,
    )
    for epoch in range(start, cfg["epochs"]):
        if epoch != start:
            if rank == 0:
                _grown(path, len(shared))
            shared.refresh()  # collective: every rank moves to rank 0's newest snapshot
        sampler.set_epoch(epoch)
        tag = f"{cfg['run']}-rank{rank}-epoch{epoch}"
        with open(os.path.join(out, f"{tag}.jsonl"), "w") as log:
            steps = 0
            for step, batch in enumerate(loader):
                idx = batch[:, 0]
                whole = torch.equal(batch, row(idx))
                log.write(json.dumps({"step": step, "idx": idx.tolist(), "whole": whole}) + "\n")
                log.flush()
                dist.all_reduce(torch.ones(1))  # DDP's gradient sync: lockstep
                steps += 1
                if rank == 0 and step % 3 == 0:
                    ckpt = os.path.join(out, f"ckpt-{cfg['run']}.json")
                    with open(ckpt + ".tmp", "w") as f:
                        json.dump({"state": sampler.state_dict(), "step": step}, f)
                    os.replace(ckpt + ".tmp", ckpt)
                if cfg.get("kill_at") == step:
                    os.kill(os.getpid(), signal.SIGKILL)  # preempted, workers and all
        with open(os.path.join(out, f"{tag}.json"), "w") as f:
            json.dump({"length": len(shared), "steps": steps}, f)
    dist.barrier()
    shared.close()
    dist.destroy_process_group()


def _run(tmp: Path, path: str, cfg: dict[str, Any], expect: int = 0) -> None:
    """Run two ranks to the end (exit code ``expect``, -9 when they kill themselves)."""
    rdzv = str(tmp / f"rdzv-{cfg['run']}")
    procs = [
        _ctx().Process(target=_rank_main, args=(r, rdzv, path, str(tmp), cfg)) for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p for p in procs if p.exitcode is None]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, f"{len(hung)} rank(s) hung"
    assert [p.exitcode for p in procs] == [expect] * WORLD


def _closed_rank_main(rank: int, rdzv: str, path: str, out: str, closed: int) -> None:
    """Rank ``closed`` closes its shared reader; then every rank refreshes (collective)."""
    dist.init_process_group(
        "gloo", init_method=f"file://{rdzv}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=30),
    )  # fmt: skip
    shared = shared_snapshot(TensorBlob.open(path, "r") if rank == 0 else None, src=0)
    if rank == closed:
        shared.close()
    try:
        shared.refresh()
        got = "returned"
    except Exception as exc:
        got = type(exc).__name__
    kept = None if rank == closed else len(shared)  # the snapshot it had
    with open(os.path.join(out, f"closed{closed}-rank{rank}.json"), "w") as f:
        json.dump({"refresh": got, "len": kept}, f)
    dist.barrier()
    dist.destroy_process_group()


def _log(tmp: Path, run: str, rank: int, epoch: int) -> list[dict[str, Any]]:
    with open(tmp / f"{run}-rank{rank}-epoch{epoch}.jsonl") as f:
        return [json.loads(line) for line in f]


def _summary(tmp: Path, run: str, rank: int, epoch: int) -> dict[str, Any]:
    with open(tmp / f"{run}-rank{rank}-epoch{epoch}.json") as f:
        return json.load(f)


def _exactly_once(shares: list[list[int]], n: int) -> None:
    """Every index of range(n) at least once across ranks, the extras only DDP's padding."""
    counts = Counter(i for share in shares for i in share)
    assert set(counts) == set(range(n))
    assert sum(counts.values()) - n < WORLD


@pytest.fixture
def blob(tmp_path: Path) -> Any:
    """A blob of 200 rows, and a collector appending to it for the whole test."""
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="int64", shape=3, block_size=BLOCK) as w:
        w.write(row(torch.arange(200)))
    stop = str(tmp_path / "stop")
    collector = _ctx().Process(target=_collector, args=(path, stop))
    collector.start()
    yield path
    Path(stop).touch()
    collector.join(TIMEOUT)
    if collector.exitcode is None:
        collector.kill()
    assert collector.exitcode == 0


def test_every_epoch_covers_one_shared_snapshot_exactly_once_across_ranks(tmp_path, blob):
    _run(tmp_path, blob, {"run": "a", "epochs": 2, "window": 2})
    lengths = []
    for epoch in range(2):
        summaries = [_summary(tmp_path, "a", r, epoch) for r in range(WORLD)]
        assert summaries[0] == summaries[1], "ranks saw different snapshots or batch counts"
        n = summaries[0]["length"]
        logs = [_log(tmp_path, "a", r, epoch) for r in range(WORLD)]
        assert all(entry["whole"] for log in logs for entry in log), "a torn row"
        _exactly_once([[i for e in log for i in e["idx"]] for log in logs], n)
        lengths.append(n)
    assert 200 <= lengths[0] < lengths[1], "the second epoch did not take the newer snapshot"


def _expected(length: int, rank: int, epoch: int) -> list[list[int]]:
    """What rank ``rank`` gets in a whole epoch drawn from ``length`` rows."""

    class Rows:
        def __len__(self) -> int:
            return length

    s = DistributedBlobSampler(Rows(), num_replicas=WORLD, rank=rank, batch_size=BATCH, seed=SEED)
    s.set_epoch(epoch)
    return list(s)


def _check_resumed(tmp_path: Path) -> None:
    with open(tmp_path / "ckpt-k.json") as f:
        ckpt = json.load(f)
    state, saved = ckpt["state"], ckpt["step"]
    assert saved == 3, "the checkpoint is the one of step 3"
    length = state["length"]
    assert state["position"] == (saved + 1) * BATCH * WORLD
    before = [_log(tmp_path, "k", r, 0) for r in range(WORLD)]
    after = [_log(tmp_path, "r", r, 0) for r in range(WORLD)]
    assert [len(log) for log in before] == [6, 6], "the first run died after step 5"
    assert len(after[0]) == len(after[1])
    assert _summary(tmp_path, "r", 0, 0) == _summary(tmp_path, "r", 1, 0)
    assert _summary(tmp_path, "r", 0, 0)["length"] > length, "the blob grew between the runs"
    shares = []
    for r in range(WORLD):
        expected = _expected(length, r, 0)
        done = [e["idx"] for e in before[r][: saved + 1]]
        rest = [e["idx"] for e in after[r]]
        assert done == expected[: saved + 1]
        assert len(rest) == len(expected) - (saved + 1)
        # The rest of the same order; only DDP's padding at the very end may differ.
        assert rest[:-1] == expected[saved + 1 : -1]
        assert all(e["whole"] for e in before[r] + after[r])
        shares.append([i for batch in done + rest for i in batch])
    _exactly_once(shares, length)  # steps 4 and 5 of the killed run are read again, once


def test_a_job_killed_mid_epoch_resumes_with_exactly_the_remaining_indices(tmp_path, blob):
    _run(tmp_path, blob, {"run": "k", "epochs": 1, "kill_at": 5}, expect=-signal.SIGKILL)
    _grown(blob, 260)
    _run(tmp_path, blob, {"run": "r", "epochs": 1, "resume": "k"})
    _check_resumed(tmp_path)


def test_the_same_with_spawned_dataloader_workers_fetching_ahead(tmp_path, blob):
    # Workers per rank: 2 and 1 in the killed run, 1 and 0 on resume. The state
    # does not depend on them (nor do the ranks need the same number).
    kill = {"run": "k", "epochs": 1, "kill_at": 5, "workers": [2, 1]}
    _run(tmp_path, blob, kill, expect=-signal.SIGKILL)
    _grown(blob, 260)
    _run(tmp_path, blob, {"run": "r", "epochs": 1, "resume": "k", "workers": [1, 0]})
    _check_resumed(tmp_path)


# -- the script of docs/ddp.md -------------------------------------------------------------


def test_the_ddp_page_script_runs_under_torchrun_while_a_collector_appends(tmp_path):
    script = ROOT / "scripts" / "ddp_train.py"
    page = (ROOT / "docs" / "ddp.md").read_text()
    assert script.read_text() in page, "docs/ddp.md must show scripts/ddp_train.py as it is"
    path = str(tmp_path / "rollouts.blob")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = sys.executable
    collector = subprocess.Popen([py, str(script), "collect", path, "--seconds", "8"], env=env)
    try:
        _grown(path, 0)
        train = subprocess.run(
            [os.path.join(os.path.dirname(py), "torchrun"), "--standalone",
             "--nproc_per_node", "2", str(script), "train", path, "--epochs", "2"],
            env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    finally:
        collector.wait(TIMEOUT)
    assert train.returncode == 0, train.stdout + train.stderr
    assert collector.returncode == 0
    lines = [line for line in train.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2, train.stdout
    assert "resumable at position" in train.stdout


# -- one process (world size 1): the collective's checks -------------------------------------


@pytest.fixture
def world1(tmp_path: Path) -> Any:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def small(tmp_path: Path) -> str:
    path = str(tmp_path / "small")
    with TensorBlob.open(path, "w", dtype="int64", shape=3, block_size=4) as w:
        w.write(row(torch.arange(10)))
    return path


@pytest.mark.parametrize("closed", [0, 1])
def test_a_refresh_with_a_closed_reader_on_any_rank_raises_on_every_rank(tmp_path, small, closed):
    """ddp.md: if any rank fails, every rank raises and keeps the snapshot it had. A
    reader closed on a rank other than ``src`` must not be reopened by the refresh."""
    rdzv = str(tmp_path / f"rdzv-closed{closed}")
    procs = [
        _ctx().Process(target=_closed_rank_main, args=(r, rdzv, small, str(tmp_path), closed))
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
        if p.exitcode is None:
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * WORLD
    for r in range(WORLD):
        with open(tmp_path / f"closed{closed}-rank{r}.json") as f:
            got = json.load(f)
        assert got["refresh"] == "BlobClosedError", (r, got)
        assert got["len"] == (None if r == closed else 10)


def test_a_shared_reader_holds_its_own_lease_and_refreshes_collectively(world1, small):
    blob = TensorBlob.open(small, "r")
    shared = shared_snapshot(blob)
    blob.close()
    assert isinstance(shared, SharedReader)
    with TensorBlob.open(small, "r+") as w:
        w.write(torch.zeros(10, 3, dtype=torch.int64))  # frees every block of the snapshot
        w.flush()
    assert torch.equal(shared[:], row(torch.arange(10)))  # the lease kept them
    assert (len(shared), shared.shape, shared.dtype, shared.block_size) == (
        10,
        (3,),
        torch.int64,
        4,
    )
    assert torch.equal(shared.__getitems__([9, 0]).collated, row(torch.tensor([9, 0])))
    copy = pickle.loads(pickle.dumps(shared))  # what a spawned worker gets: a plain reader
    assert isinstance(copy, TensorBlob)
    assert torch.equal(copy[:], shared[:])
    copy.close()
    assert shared.refresh() == 10
    assert shared[:].sum() == 0
    shared.close()
    assert shared.closed


def test_a_tensordb_is_shared_sampled_batched_and_resumed_as_a_blob_is(world1, tmp_path):
    path = str(tmp_path / "db")
    schema = {"obs": ("int64", (3,)), "done": ("bool", ())}
    with TensorDB.open(path, "w", schema=schema, block_size=4) as w:
        w.write({"obs": row(torch.arange(30)), "done": torch.arange(30) % 3 == 0})
    db = TensorDB.open(path, "r")
    shared = shared_snapshot(db)
    db.close()
    with TensorDB.open(path, "a") as w:  # the collector goes on: not in this snapshot
        w.write({"obs": row(torch.arange(30, 40)), "done": torch.zeros(10, dtype=torch.bool)})
    sampler = DistributedBlobSampler(shared, batch_size=4, seed=3, window_blocks=2)
    seen, checkpoint = [], None
    for step, batch in enumerate(BlobLoader(shared, batch_sampler=sampler)):
        assert set(batch) == {"obs", "done"}  # a dict batch, fields row-aligned
        assert torch.equal(batch["done"], batch["obs"][:, 0] % 3 == 0)
        seen += batch["obs"][:, 0].tolist()
        if step == 2:
            checkpoint = sampler.state_dict()
            break
    again = DistributedBlobSampler(shared, batch_size=4, seed=3, window_blocks=2)
    again.load_state_dict(checkpoint)
    for batch in BlobLoader(shared, batch_sampler=again):
        seen += batch["obs"][:, 0].tolist()
    assert sorted(seen) == list(range(30))  # the shared snapshot, each record once
    shared.close()


def test_shared_snapshot_refuses_a_bad_src_or_a_writer_on_every_rank(world1, small):
    with TensorBlob.open(small, "r") as blob:
        with pytest.raises(InvalidArgumentError, match=r"src=1: not a rank of the group \(ranks"):
            shared_snapshot(blob, src=1)
        with pytest.raises(BlobTypeError, match="blob must be a reader"):
            shared_snapshot(None)
    with (
        TensorBlob.open(small, "a") as writer,
        pytest.raises(UnsupportedOperationError, match="open it read-only"),
    ):
        shared_snapshot(writer)
