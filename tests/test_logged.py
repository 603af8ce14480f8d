"""Rows logged in the journal: a sync="full" commit of a few rows costs one device flush.

The rows travel in the commit's journal frame (F6 ``r``), written in place
over the journal's zero padding (F5); the block file is fsynced later. These
tests check the cost (one fdatasync per commit, nothing else fsynced), that a
power cut that kept the frame but not the block loses nothing (readers lay
the logged rows over their mappings, a writer's recovery writes them back),
and what the padding means to readers and tools.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import fake_boot
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorblob
from tensorblob import TensorBlob, TensorDB, _durable, _fast, _format, _records
from tensorblob import _durability as durability
from tensorblob._blockfiles import block_name
from tensorblob._journal import PAD_BYTES, read_journal, scan_journal
from tensorblob._meta import read_meta
from tensorblob._snapshot import load
from tensorblob.errors import CorruptBlobError

B = 16
ROW = (4,)


def rows(start: int, stop: int) -> torch.Tensor:
    return torch.arange(start * 4, stop * 4, dtype=torch.float32).view(-1, 4)


def journal(path: str):
    return read_journal(path, read_meta(path).uuid)


def steps_of(fn) -> list[tuple[str, str]]:
    """The disk steps ``fn()`` takes: (step, file name)."""
    log: list[tuple[str, str]] = []
    old = _durable.set_fault_hook(lambda s, p, e: log.append((s, os.path.basename(p))))
    try:
        fn()
    finally:
        _durable.set_fault_hook(old)
    return log


def test_a_full_commit_of_one_row_flushes_the_journal_once_and_fsyncs_no_block(tmp_path):
    path = str(tmp_path / "b")
    with TensorBlob.open(path, "w", dtype="float32", shape=ROW, block_size=B, sync="full") as b:
        b.write(rows(0, 1))  # the block's first row: the general path makes the block durable
        for i in range(1, 6):
            log = steps_of(lambda i=i: b.write(rows(i, i + 1)))
            flushes = [s for s in log if s[0] in ("fsync", "fdatasync", "fsync_dir")]
            assert flushes == [("fdatasync", "journal")], log
            assert ("overwrite", "journal") in log  # in place, over the padding
        recs = journal(path).records
        logged = [r for r in recs if "r" in r]
        assert [r["n"] for r in logged] == [2, 3, 4, 5, 6]
        assert all(r["d"] is True for r in logged)
        assert logged[-1]["r"] == rows(5, 6).numpy().tobytes()
    with TensorBlob.open(path, "r") as b:
        assert torch.equal(b[:], rows(0, 6))


def test_sync_normal_and_large_commits_do_not_log_rows(tmp_path):
    path = str(tmp_path / "b")
    with TensorBlob.open(path, "w", dtype="float32", shape=ROW, block_size=B) as b:
        for i in range(4):
            b.write(rows(i, i + 1))
        assert not any("r" in r for r in journal(path).records)
    big = str(tmp_path / "big")
    n = _fast.LOG_ROW_BYTES // 16 + 1  # one row more than a logged commit may carry
    with TensorBlob.open(big, "w", dtype="float32", shape=ROW, block_size=4 * n, sync="full") as b:
        b.write(rows(0, 1))
        log = steps_of(lambda: b.write(rows(1, 1 + n)))
        assert ("fsync", block_name(0)) in log
        assert not any("r" in r for r in journal(big).records)


def _write_and_die(path: str, n: int, db: bool = False) -> None:
    """In a child: open with sync="full", commit ``n`` single rows, die without closing."""
    code = f"""
import os, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from tensorblob import TensorBlob, TensorDB
from test_logged import rows, SCHEMA, record
if {db}:
    b = TensorDB.open({path!r}, "w", schema=SCHEMA, block_size={B}, sync="full")
    for i in range({n}):
        b.write(record(i))
else:
    b = TensorBlob.open({path!r}, "w", dtype="float32", shape={ROW}, block_size={B}, sync="full")
    for i in range({n}):
        b.write(rows(i, i + 1))
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def _lose_block_rows(path: str, start: int, stop: int, row_bytes: int, offset: int = 0) -> None:
    """A power cut that kept the journal but not rows [start, stop) of block 0."""
    with open(os.path.join(path, "blocks", block_name(0)), "r+b") as f:
        f.seek(offset + start * row_bytes)
        f.write(b"\xff" * ((stop - start) * row_bytes))


def test_after_a_power_cut_readers_see_logged_rows_and_recovery_writes_them_back(tmp_path):
    path = str(tmp_path / "b")
    _write_and_die(path, 9)
    _lose_block_rows(path, 1, 9, 16)
    # Same boot: the page cache is the truth (here, the damaged file), nothing is laid over.
    assert load(path, read_meta(path)).state.logged == []
    with TensorBlob.open(path, "r") as r:
        assert r[2].isnan().all()
    with fake_boot("after-the-power-cut"):
        st = load(path, read_meta(path)).state
        assert {bid for bid, _, _ in st.logged} == {0}
        assert len(st.logged) == 8
        with TensorBlob.open(path, "r") as r:
            assert torch.equal(r[:], rows(0, 9))
            assert torch.equal(r[3], rows(3, 4)[0])
            assert torch.equal(r[[8, 1]], rows(0, 9)[[8, 1]])
            copy = pickle.loads(pickle.dumps(r))  # a DataLoader worker's copy
            assert torch.equal(copy[:], rows(0, 9))
            copy.close()
            # The tools read through the same loader, and plan the rewrite.
            assert tensorblob.check(path, deep=True)["verdict"] == "needs-recover"
            with TensorBlob.open(path, "a") as w:  # the writer's recovery rewrites the rows
                assert any("logged in the journal" in a for a in w.recovery_actions)
                assert torch.equal(w[:], rows(0, 9))
                w.write(rows(9, 10))
            assert r.refresh() == 10
            assert torch.equal(r[:], rows(0, 10))  # no longer laid over: the file has them
    raw = Path(path, "blocks", block_name(0)).read_bytes()[: 10 * 16]
    assert raw == rows(0, 10).numpy().tobytes()
    assert tensorblob.check(path, deep=True)["verdict"] == "clean"


def test_a_read_over_more_blocks_than_are_mapped_lays_the_logged_rows_over_too(tmp_path):
    """Blocks past the cache are read without a mapping: one with logged rows is mapped."""
    path = str(tmp_path / "b")
    _write_and_die(path, 3 * B + 5)  # rows 1-4 of block 3 are logged
    with open(os.path.join(path, "blocks", block_name(3)), "r+b") as f:
        f.seek(16)
        f.write(b"\xff" * 4 * 16)  # the power cut lost them from the block file
    with fake_boot("after-the-power-cut"), TensorBlob.open(path, "r", max_cached_blocks=1) as r:
        assert {bid for bid, _, _ in r._state.logged} == {3}
        want, key = rows(0, 3 * B + 5), [50, 3, 20, 8, 40, 52]
        assert torch.equal(r[key], want[key])  # block 3 not mapped before: each path maps it
        assert torch.equal(r[0], want[0])  # the one block mapped is 0 again
        assert torch.equal(r[:], want)


def test_after_a_power_cut_only_rows_logged_since_the_last_block_durable_marker_are_redone(
    tmp_path,
):
    """F9: a durable point fsyncs the blocks, so rows logged before it are in their files;
    only those logged after the last block-durable marker are laid over or rewritten."""
    path = str(tmp_path / "b")
    b = TensorBlob.open(path, "w", dtype="float32", shape=ROW, block_size=B, sync="full")
    for i in range(4):
        b.write(rows(i, i + 1))  # rows 1-3 logged
    b.flush()  # the blocks fsynced: a block-durable marker
    for i in range(4, 6):
        b.write(rows(i, i + 1))  # logged again
    assert sum("r" in r for r in journal(path).records) == 5
    with fake_boot("after-the-power-cut"):
        st = load(path, read_meta(path)).state
    b.close()
    row_bytes = 4 * 4
    assert [(bid, off) for bid, off, _ in st.logged] == [(0, 4 * row_bytes), (0, 5 * row_bytes)]


@pytest.mark.parametrize("how", ["open", "cli"])
def test_recovery_rewrites_logged_rows_lost_within_the_same_boot(tmp_path, how):
    """A block's writeback that fails (EIO) and an unmount lose the page cache's copy of
    acknowledged sync="full" rows without a reboot: recovery, by a writer's open or by
    `tensorblob recover`, writes every logged row since the last block-durable marker
    back from the journal, whatever boot wrote it."""
    path = str(tmp_path / "b")
    _write_and_die(path, 9)
    _lose_block_rows(path, 1, 9, 16)  # what the failed writeback left on the disk
    if how == "open":
        with TensorBlob.open(path, "a") as w:
            assert any("logged in the journal" in a for a in w.recovery_actions)
    else:
        cli = [sys.executable, "-m", "tensorblob", "recover", path]
        assert subprocess.run(cli, capture_output=True, check=False).returncode == 0
    with TensorBlob.open(path, "r") as r:
        assert torch.equal(r[:], rows(0, 9))
    assert tensorblob.check(path, deep=True)["verdict"] == "clean"


SCHEMA = {"obs": ("uint8", (3,)), "reward": ("float32", ())}


def record(i: int) -> dict[str, torch.Tensor]:
    return {
        "obs": torch.tensor([i, i + 1, i + 2], dtype=torch.uint8),
        "reward": torch.tensor(float(i) / 2),
    }


def test_records_logged_rows_cover_every_field(tmp_path):
    path = str(tmp_path / "db")
    _write_and_die(path, 6, db=True)
    meta = read_meta(path)
    reward = meta.fields[1]
    _lose_block_rows(path, 1, 6, 4, offset=reward.offset)  # one field's rows only
    with fake_boot("after-the-power-cut"), TensorDB.open(path, "r") as db:
        got = db[:]
        assert got["reward"].tolist() == [i / 2 for i in range(6)]
        assert got["obs"][:, 0].tolist() == list(range(6))


def test_zero_padding_is_not_a_torn_tail_but_other_bytes_are(tmp_path):
    path = str(tmp_path / "b")
    b = TensorBlob.open(path, "w", dtype="float32", shape=ROW, block_size=B, sync="full")
    for i in range(3):
        b.write(rows(i, i + 1))
    size = os.path.getsize(os.path.join(path, "journal"))
    j = journal(path)
    assert size > j.end  # padded ahead
    assert not j.torn
    assert j.size == j.end
    assert scan_journal(path, read_meta(path).uuid).size == j.end
    b.close()  # the journal keeps its padding (a few rows logged: no checkpoint)
    end = journal(path).end
    size = os.path.getsize(os.path.join(path, "journal"))
    assert end < size <= end + PAD_BYTES
    with TensorBlob.open(path, "r") as r:  # readers read past the padding
        assert torch.equal(r[:], rows(0, 3))
    with open(os.path.join(path, "journal"), "ab") as f:
        f.write(bytes(100) + b"\x01" + bytes(10))
    j = journal(path)
    assert j.torn
    assert j.size == size + 101  # the content ends at the last byte that is not zero


def test_full_collector_sessions_do_not_checkpoint_at_every_open_or_close(tmp_path):
    """A sync="full" collector that opens, logs a few rows and closes, again and again:
    its close appends a sync record (no checkpoint), and the next session's bound
    counts the rows logged before it as logged (not as records to replay). Only
    once the journal holds more logged rows than close() leaves does a close
    checkpoint; a closed journal's padding is less than PAD_BYTES."""
    path = str(tmp_path / "b")
    shape = (768,)  # 3 KiB rows: 16 of them are 48 KiB, more than CHECKPOINT_BYTES in 2 sessions
    TensorBlob.open(path, "w", dtype="float32", shape=shape, block_size=4096).close()
    jpath = os.path.join(path, "journal")
    gens, sizes = [], []
    for k in range(7):
        with TensorBlob.open(path, "a", sync="full") as b:
            log = steps_of(lambda k=k, b=b: b.write(torch.full((16, 768), float(k))))
            if k > 0:  # the first session replaces the version 4 journal (no logged rows)
                assert [s for s in log if s[0] in ("fsync", "fdatasync")] == [
                    ("fdatasync", "journal")
                ], log
        j = journal(path)
        gens.append(j.gen)
        sizes.append(os.path.getsize(jpath) - j.end)
        logged = sum(len(r["r"]) for r in j.records if "r" in r)
        assert logged <= durability.CLOSE_CHECKPOINT_LOGGED
    assert all(0 <= pad < PAD_BYTES for pad in sizes), sizes  # what readers read past the end
    # Sessions 1-5 share one journal (48 KiB logged each); the 6th close passes the
    # bound (288 KiB) and checkpoints.
    assert gens[1] == gens[5], gens
    assert gens[6] == gens[5] + 1, gens
    with TensorBlob.open(path, "r") as b:
        assert len(b) == 7 * 16
        assert torch.equal(b[::16][:, 0], torch.arange(7, dtype=torch.float32))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 64), st.lists(st.integers(0, 80), max_size=3))
def test_the_content_ends_after_the_last_byte_that_is_not_zero(data, end, marks):
    """F5: zeros after the frames are padding; any other byte is content (a torn tail)."""
    buf = bytearray(data) + bytes(16)
    for m in marks:
        if m < len(buf):
            buf[m] = 7
    end = min(end, len(buf))
    want = end + len(bytes(buf[end:]).rstrip(b"\0"))
    assert _format.content_end(bytes(buf), end) == want


def test_logged_journal_is_bounded(tmp_path):
    path = str(tmp_path / "b")
    shape = (256,)  # 1 KiB rows
    opts = {"dtype": "float32", "shape": shape, "block_size": 4096, "sync": "full"}
    with TensorBlob.open(path, "w", **opts) as b:
        for i in range(1500):
            b.write(torch.full(shape, float(i)))
            assert b._engine.journal.size <= (1 << 20) + 4096
        assert len(b) == 1500
    with TensorBlob.open(path, "r") as b:
        assert b[1499][0].item() == 1499.0


@pytest.mark.parametrize(
    ("rec", "why"),
    [
        ({"t": "a", "n": 2, "r": b"\0" * 16, "q": 1}, "r without d"),
        ({"t": "a", "n": 2, "d": True, "r": "text", "q": 1}, "bad r"),
    ],
)
def test_a_malformed_logged_record_is_damage(rec, why):
    with pytest.raises(CorruptBlobError, match=why):
        _records.check_record(rec, "journal")
