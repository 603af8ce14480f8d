"""Reads into a caller's buffer: ``read(size, out=)`` and ``take(index, out=)`` (issue 18).

The rows go straight into ``out`` (one copy, from the mapping), and ``out[:k]``
comes back; a buffer that does not fit is refused before anything is read,
and the cursor does not move.
"""

from __future__ import annotations

import pytest
import torch

from tensorblob import (
    BlobTypeError,
    DTypeMismatchError,
    InvalidArgumentError,
    ShapeMismatchError,
    TensorBlob,
    TensorDB,
    _rows,
)

ROWS = torch.arange(60, dtype=torch.float32).reshape(20, 3)


@pytest.fixture
def blob(tmp_path):
    with TensorBlob.open(tmp_path / "b", "w", dtype="float32", shape=3, block_size=4) as b:
        b.write(ROWS)
    with TensorBlob.open(tmp_path / "b", "r", max_cached_blocks=2) as b:
        yield b


@pytest.mark.parametrize(
    "index",
    [slice(1, 3), slice(2, 19), [9, 0, 5, 5], [1, 2, 3], slice(18, 0, -3), list(range(19, -1, -1))],
    ids=repr,
)
def test_take_copies_the_rows_into_the_buffer_and_returns_its_prefix(blob, index):
    out = torch.full((24, 3), -1.0)
    got = blob.take(index, out=out)
    want = blob[index]
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, want)
    assert torch.equal(out[len(want) :], torch.full((24 - len(want), 3), -1.0))  # untouched


def test_read_fills_the_buffer_from_the_cursor(blob):
    out = torch.empty(8, 3)
    blob.seek(14)
    got = blob.read(8, out=out)
    assert torch.equal(got, ROWS[14:20])
    assert blob.tell() == 20
    assert blob.read(out=out).shape == (0, 3)  # at the end: nothing
    row = torch.empty(3)
    assert blob.take(-1, out=row) is row
    assert torch.equal(row, ROWS[19])


@pytest.mark.parametrize(
    ("out", "exc"),
    [
        (torch.zeros(2, 3), ShapeMismatchError),  # too few rows
        (torch.zeros(8, 4), ShapeMismatchError),
        (torch.zeros(8), ShapeMismatchError),
        (torch.zeros(8, 3, dtype=torch.float64), DTypeMismatchError),
        (torch.zeros(3, 8).t(), InvalidArgumentError),  # not contiguous
        ([[0.0] * 3] * 8, BlobTypeError),
    ],
    ids=["short", "row-shape", "no-batch", "dtype", "strided", "list"],
)
def test_a_buffer_that_does_not_fit_is_refused_and_nothing_moves(blob, out, exc):
    blob.seek(3)
    before = out.clone() if isinstance(out, torch.Tensor) else None
    with pytest.raises(exc):
        blob.read(5, out=out)
    with pytest.raises(exc):
        blob.take([0, 7, 12, 13, 19], out=out)
    assert blob.tell() == 3
    if before is not None:
        assert torch.equal(out, before)


def test_a_tensordb_reads_every_field_into_its_buffer(tmp_path):
    schema = {"a": ("int64", ()), "b": ("float32", (2,))}
    recs = {"a": torch.arange(10), "b": torch.rand(10, 2)}
    with TensorDB.open(tmp_path / "db", "w", schema=schema, block_size=4) as db:
        db.write(recs)
    with TensorDB.open(tmp_path / "db") as db:
        out = {"a": torch.zeros(8, dtype=torch.int64), "b": torch.zeros(8, 2)}
        got = db.take([7, 1, 3], out=out)
        assert got["a"].data_ptr() == out["a"].data_ptr()
        assert torch.equal(got["a"], recs["a"][[7, 1, 3]])
        assert torch.equal(got["b"], recs["b"][[7, 1, 3]])
        got = db.read(8, out=out)
        assert torch.equal(got["b"], recs["b"][:8])
        assert torch.equal(db.column("a").take(slice(2, 9), out=out["a"]), recs["a"][2:9])
        with pytest.raises(InvalidArgumentError, match="one tensor per field"):
            db.take([1], out={"a": out["a"]})
        bad = {"a": out["a"], "b": torch.empty(8, 3)}
        before = out["a"].clone()
        with pytest.raises(ShapeMismatchError, match="field 'b'"):
            db.take([0, 1], out=bad)
        assert torch.equal(out["a"], before)  # every field is checked before any is read


def test_every_range_of_a_field_reads_right_across_more_blocks_than_are_mapped(tmp_path):
    """A range is copied a group of at most ``max_cached_blocks`` blocks at a time, one
    field of a record alone (``BlockStore.span_into``): every start and stop."""
    recs = {"a": ROWS, "b": torch.arange(20, dtype=torch.int16)}
    with TensorDB.open(
        tmp_path / "d", "w", schema={"a": ("float32", 3), "b": ("int16", ())}, block_size=4
    ) as db:
        db.write(recs)
    with TensorDB.open(tmp_path / "d", "r", max_cached_blocks=2) as db:
        for name, want in recs.items():
            col = db.column(name)
            for lo in range(21):
                for hi in range(lo, 21):
                    assert torch.equal(col[lo:hi], want[lo:hi]), (name, lo, hi)
                    out = torch.full_like(want, -1)
                    assert torch.equal(col.take(slice(lo, hi), out=out), want[lo:hi])


@pytest.mark.parametrize("at", [0, 4, 16, 2048, 4092])
def test_a_large_read_buffer_never_starts_just_past_its_source_in_a_page(at):
    """A buffer of over 32 MB is mapped afresh by malloc, 16 bytes into a page: just
    past a block mapping's first byte, where this machine's memcpy runs 3-10x slower."""
    n = (33 << 20) // 4
    raw, t = _rows._buffer(n, 4, at)
    assert raw.shape == t.shape == (n, 4)
    assert t.dtype == torch.uint8
    assert raw.ctypes.data == t.data_ptr()
    assert not 0 < (t.data_ptr() - at) % _rows.PAGE < 64


def test_large_ranges_of_a_small_field_read_right(tmp_path):
    """Ranges over 128 KiB get a placed buffer: one block, several, and over 32 MB."""
    rows = torch.arange(9 << 20, dtype=torch.float32)
    with TensorBlob.open(tmp_path / "b", "w", dtype="float32", shape=(), block_size=1 << 16) as b:
        b.write(rows)
    with TensorBlob.open(tmp_path / "b", "r") as b:
        for lo, hi in ((1, 1 << 16), (3, 5 << 16), (0, len(rows)), (7, len(rows) - 1)):
            assert torch.equal(b[lo:hi], rows[lo:hi]), (lo, hi)
