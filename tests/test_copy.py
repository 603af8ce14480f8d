"""copy_blob and `tensorblob copy`: one committed snapshot, whole or not at all (issue 18).

A copy taken while a writer in another process appends, overwrites and
truncates must open, pass ``check --deep`` and equal one committed snapshot
of the source. A copy killed at any of its disk steps leaves either nothing
at the destination or the complete copy, and the next copy sweeps what the
dead one left.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import harness
import pytest
import torch

import tensorblob
from tensorblob import (
    BlobNotFoundError,
    DestinationExistsError,
    InvalidArgumentError,
    TensorBlob,
    TensorDB,
    _durable,
    copy_blob,
)
from tensorblob._cli import main

SCHEMA = {"obs": ("uint8", (2, 3)), "reward": ("float32", ())}


def make_blob(path: Path, n: int = 10, block_size: int = 4) -> torch.Tensor:
    rows = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=block_size) as b:
        b.write(rows)
    return rows


def read(path: Path | str) -> Any:
    return harness.read_all(str(path))


def test_a_copy_has_the_same_rows_layout_and_passes_a_deep_check(tmp_path):
    rows = make_blob(tmp_path / "src", 10)
    assert copy_blob(tmp_path / "src", tmp_path / "sub" / "dst") == 10  # parents created
    with TensorBlob.open(tmp_path / "sub" / "dst") as b:
        assert (b.dtype, b.shape, b.block_size) == (torch.float32, (3,), 4)
        assert torch.equal(b[:], rows)
    report = tensorblob.check(tmp_path / "sub" / "dst", deep=True)
    assert report["verdict"] == "clean", report
    assert report["data_checksums"]["without_checksum"] == 0  # durable: every block summed


def test_compact_rewrites_the_rows_in_another_block_size(tmp_path):
    rows = make_blob(tmp_path / "src", 10)
    with TensorBlob.open(tmp_path / "src", "r+") as b:
        b.seek(2)
        b.write(torch.zeros(3, 3))  # copy-on-write: the source holds freed blocks too
        rows[2:5] = 0
    copy_blob(tmp_path / "src", tmp_path / "dst", compact=True, block_size=3)
    with TensorBlob.open(tmp_path / "dst") as b:
        assert b.block_size == 3
        assert torch.equal(b[:], rows)
    assert len(os.listdir(tmp_path / "dst" / "blocks")) == 4  # exactly ceil(10 / 3)


def test_a_tensordb_copies_every_field(tmp_path):
    recs = {"obs": torch.arange(54, dtype=torch.uint8).reshape(9, 2, 3), "reward": torch.rand(9)}
    with TensorDB.open(tmp_path / "src", "w", schema=SCHEMA, block_size=4) as db:
        db.write(recs)
    for compact in (False, True):
        dst = tmp_path / f"dst{compact}"
        assert copy_blob(tmp_path / "src", dst, compact=compact) == 9
        with TensorDB.open(dst) as db:
            assert db.schema == {"obs": ("uint8", (2, 3)), "reward": ("float32", ())}
            got = db[:]
            assert all(torch.equal(got[k], recs[k]) for k in recs)


def test_bad_arguments_and_an_existing_destination_are_refused(tmp_path):
    make_blob(tmp_path / "src")
    make_blob(tmp_path / "taken", 3)
    before = harness.snapshot_files(str(tmp_path))
    with pytest.raises(DestinationExistsError):
        copy_blob(tmp_path / "src", tmp_path / "taken")
    with pytest.raises(BlobNotFoundError):
        copy_blob(tmp_path / "nothing", tmp_path / "x")
    with pytest.raises(InvalidArgumentError, match="compact=True"):
        copy_blob(tmp_path / "src", tmp_path / "x", block_size=8)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        copy_blob(tmp_path / "src", tmp_path / "x", compact=True, block_size=0)
    assert harness.snapshot_files(str(tmp_path)) == before
    (tmp_path / "empty").mkdir()
    copy_blob(tmp_path / "src", tmp_path / "empty")  # an empty directory is taken
    assert len(read(tmp_path / "empty")) == 10


# -- under a live writer ---------------------------------------------------------------

WRITER_OPS: list[list[Any]] = [
    ["open", "r+", "normal", {}],
    *[
        op
        for i in range(40)
        for op in (
            ["seek", 0, 2],
            ["write", 3, i],
            ["seek", i % 5, 0],
            ["write", 2, 100 + i],  # overwrites: copy-on-write of old blocks
            ["truncate", 10 + (i * 7) % 20],
        )
    ],
    ["close"],
]


@pytest.mark.parametrize("compact", [False, True], ids=["blocks", "compact"])
def test_copies_under_a_live_writer_are_each_one_committed_snapshot(tmp_path, compact):
    path = str(tmp_path / "src")
    base = harness.create(12)
    ops = [*base, *WRITER_OPS]
    states = [s for s in harness.expected_states(ops, {}) if s is not None]
    work = tmp_path / "w"
    work.mkdir()
    harness.run_child(path, base, 0, str(work))  # the source, then the writer on it
    proc = harness._context().Process(
        target=harness.child_main,
        args=(path, WRITER_OPS, 0, str(work / "acks"), str(work / "log")),
    )
    proc.start()
    copies = 0
    seen = set()
    try:
        while proc.is_alive() or copies < 3:
            dst = tmp_path / f"copy{copies}"
            copy_blob(path, dst, compact=compact)
            got = read(dst)
            k = next((i for i, s in enumerate(states) if harness.same(got, s)), None)
            assert k is not None, f"copy {copies} ({len(got)} rows) is no committed snapshot"
            seen.add(k)
            assert tensorblob.check(dst, deep=True)["verdict"] == "clean"
            TensorBlob.unlink(dst)
            copies += 1
    finally:
        proc.join(60)
    assert proc.exitcode == 0
    assert copies >= 3


# -- killed at any step --------------------------------------------------------------


def _copy_dying_at(src: str, dst: Path, k: int) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        steps = [0]

        def hook(step: str, path: str, extent: object) -> None:
            steps[0] += 1
            if steps[0] == k:
                os._exit(9)

        _durable.set_fault_hook(hook)
        try:
            copy_blob(src, dst)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_copy_killed_at_any_step_leaves_nothing_or_the_whole_copy(tmp_path):
    rows = make_blob(tmp_path / "src", 10)
    dst = tmp_path / "dst"
    k = 1
    while (code := _copy_dying_at(str(tmp_path / "src"), dst, k)) == 9:
        got = read(dst)
        assert got is None or torch.equal(got, rows), f"died at step {k}: a partial copy"
        if got is not None:
            TensorBlob.unlink(dst)
        k += 1
    assert code == 0
    assert torch.equal(read(dst), rows)
    assert k > 10
    TensorBlob.unlink(dst)
    copy_blob(tmp_path / "src", dst)  # sweeps the hidden build directories of dead copies
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_the_copy_command_reports_what_it_did(tmp_path, capsys):
    make_blob(tmp_path / "src", 10)
    t0 = time.monotonic()
    code = main(["copy", str(tmp_path / "src"), str(tmp_path / "dst"), "--json"])
    doc = __import__("json").loads(capsys.readouterr().out)
    assert (code, doc["verdict"], doc["rows"], doc["format"]) == (0, "copied", 10, "tensorblob")
    assert doc["seconds"] <= time.monotonic() - t0
    code = main(["copy", str(tmp_path / "src"), str(tmp_path / "dst")])
    out = capsys.readouterr().out
    assert code == 2
    assert "[exists]" in out
    assert "no copy was left" in out
